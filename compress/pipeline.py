"""The one pipeline, for every task: ``prepare`` (every check that needs no compute), ``build`` (teacher, scratch
baseline, assistants and the stages, each from the verified cache when it is there), ``run`` (build, measure,
report, publish) and ``validate``. What differs between tasks comes from a task adapter (``task_of``):
``ClassifyTask`` below, ``compress.lm.task.LMTask`` for language models."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from compress._io import atomic_path, claim_file, inside, publish, staging
from compress._onnx import export_onnx
from compress._progress import say
from compress.artifact import Artifact
from compress.bench import cpu_info
from compress.cache import STAGE_KIND, Cache, cache_key, runtime_files, sha256_file
from compress import bn, distributed
from compress import report as reporting
from compress.context import Context
from compress.data import Splits, load_data
from compress.errors import CompressError, ModelError
from compress.evaluate import evaluate
from compress.models import build_model, check_io, describe_spec
from compress.config import nodes
from compress.recipe import Recipe, check_chain
from compress.stages.base import STAGES, CheckContext, stages_for
from compress.stages.prune import count_macs_params
from compress.stages.train import cross_entropy
from compress.training import cached_model, fit

__all__ = ["prepare", "validate", "run", "output_dir", "output_cache", "exclusive", "build", "measure", "chain_keys",
           "relocate", "refuse_planted_links", "scratch_budget", "OWNED"]

# Names a run writes in its folder: replaced as a whole when a run is published (compress._io.publish).
OWNED = ("teacher.onnx", "scratch.onnx", "assistant*.onnx", "model.*", "report.json", "report.md", "report.png", "stages",
         "last_good", "student-hf")


@dataclass
class Prepared:
    splits: Splits
    teacher: torch.nn.Module
    student: torch.nn.Module

    @property
    def fingerprint(self) -> str:
        return self.splits.fingerprint


def output_dir(recipe: Recipe, output: str | Path | None = None, folder: str | None = None) -> Path:
    """``<root>/<name>`` (or ``<root>/<folder>``), after checking (without leaving anything behind) that it can be
    written. The root is ``--output`` (or the recipe's ``output``, else ``exported``); it may be a symlink the
    user made, but nothing below it may be (compress._io.inside)."""
    root = Path(output or recipe.output or "exported")
    target = inside(root, folder or recipe.name)
    existing = next(p for p in (target, *target.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise CompressError(f"output path {existing} is a file, not a folder; pass --output DIR")
    try:
        probe = tempfile.mkdtemp(prefix=".compress-probe-", dir=existing)
        os.rmdir(probe)
    except OSError as exc:
        raise CompressError(f"output folder {target} cannot be written ({exc.strerror or exc}); pass --output DIR") from None
    return target


def output_cache(out_dir: Path, force: bool = False) -> Cache:
    """The verified cache of an output root: ``<root>/.cache`` (never through a symlink made inside the root).
    Only the writing rank may move damaged entries aside; the other training ranks read it only."""
    return Cache(inside(out_dir.parent, ".cache"), enabled=not force, read_only=not distributed.is_writer())


def prepare(recipe):
    """Everything checked that can be without training (chain, files, data, shapes, weights), by the recipe's task;
    returns what the build starts from. Every problem is raised as a RecipeError at the recipe key that caused it."""
    prep = task_of(recipe).prepare(recipe)
    for i, st in enumerate(recipe.stages):  # each stage's own rules (its StageSpec.check)
        spec = stages_for(recipe.task)[st.type]
        if spec.check:
            spec.check(st, CheckContext(recipe, i, prep.teacher, prep.student, prep.splits))
    return prep


def prepare_classify(recipe: Recipe) -> Prepared:
    """Data and models of a classification recipe, every file and shape checked (a RecipeError at its key)."""
    check_chain(recipe)
    splits = recipe.load_data(load_data)
    teacher = _model_for(recipe, "teacher", splits, seed=recipe.seed)
    student = _model_for(recipe, "student", splits, seed=recipe.seed + 1)  # the scratch baseline starts here too
    return Prepared(splits, teacher.eval(), student)


def _model_for(recipe: Recipe, role: str, splits: Splits, seed: int) -> torch.nn.Module:
    cfg = getattr(recipe, role)
    torch.manual_seed(seed)
    try:
        model = build_model(cfg.model, splits.input_shape, splits.num_classes)
        check_io(model, splits.input_shape, splits.num_classes, f"{role} {describe_spec(cfg.model)}")
    except ModelError as exc:
        raise recipe.error_at(str(exc), role, "model") from None
    return recipe.with_weights(role, model)


def validate(recipe, output: str | Path | None = None) -> list[str]:
    """What a run would do, as lines; raises the first problem found. Trains and writes nothing."""
    lines = [f"output: {output_dir(recipe, output)}", *task_of(recipe).validate(recipe, prepare(recipe))]
    produced, specs = "torch", stages_for(recipe.task)
    for i, st in enumerate(recipe.stages):
        lines.append(f"stage {i + 1}: {st.type} ({produced} -> {specs[st.type].produces})")
        produced = specs[st.type].produces
    return lines


def validate_classify(recipe: Recipe, p: Prepared) -> list[str]:
    t_macs, t_params = count_macs_params(p.teacher, p.splits.input_shape)
    s_macs, s_params = count_macs_params(p.student, p.splits.input_shape)
    return [f"data: {p.splits.describe()}",
            f"teacher: {describe_spec(recipe.teacher.model)}, {t_params:,} params, {t_macs:,} MACs, "
            + (f"weights from {recipe.teacher.weights}" if recipe.teacher.weights
               else f"trained for {recipe.teacher.train.epochs} epochs"),
            f"student: {describe_spec(recipe.student.model)}, {s_params:,} params, {s_macs:,} MACs"]


@contextlib.contextmanager
def exclusive(out_dir: Path):
    """One run per output folder at a time: a second run fails at once instead of interleaving writes.

    The lock file ``<out_dir>/.lock`` is opened without following symlinks and never truncated."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise CompressError(f"output folder {out_dir} is not writable")
    with claim_file(inside(out_dir, ".lock"), blocking=False) as held:
        if not held:
            raise CompressError(f"another compress run is writing to {out_dir}; wait for it or use --output")
        yield


def train_cached(cache: Cache, key: str, model: torch.nn.Module, splits: Splits, *, epochs: int, lr: float,
                 batch_size: int, weight_decay: float, seed: int, desc: str, quiet: bool,
                 augment: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """Train ``model`` with cross-entropy, or reuse the verified weights cached under ``key`` (kind ``weights``).
    ``augment``: a distill stage's ``augment`` keys (as a dict), applied to the training batches the same way."""

    def make():
        from compress.stages.distill import AugmentConfig, augmenter

        res = fit(model, splits, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, seed=seed,
                  loss_fn=cross_entropy, desc=desc, quiet=quiet,
                  augment=augmenter(AugmentConfig(**augment), splits.input_shape) if augment else None)
        info = {k: v for k, v in res.info.items() if k in ("best_epoch", "bn_recalibrated")}
        return res.model, {**info, "seconds": round(res.seconds, 2)}

    return cached_model(cache, "weights", key, model, make, desc=desc, quiet=quiet)


def scratch_budget(recipe: Recipe) -> dict | None:
    """Same architecture, same number of training epochs as the student gets over the whole chain, with the first
    training stage's learning rate, batch size, weight decay and augmentation (the same treatment)."""
    trained = [(st, STAGES[st.type]) for st in recipe.stages if STAGES[st.type].trains]
    if recipe.baseline == "none" or not trained:
        return None
    # Student-sized training epochs: born-again generations and mutual peers each count (equal compute).
    first = trained[0][0]
    budget = {"epochs": sum(spec.student_epochs(st) if spec.student_epochs else st.epochs for st, spec in trained),
              "lr": first.lr, "batch_size": first.batch_size, "weight_decay": first.weight_decay}
    if (augment := first.augmentation()) is not None:  # only when set: cache keys without it stay as they were
        budget["augment"] = augment
    return budget


def run(recipe: Recipe, output: str | Path | None = None, quiet: bool = False, force: bool = False,
        folder: str | None = None) -> dict:
    """Run the recipe; write model files, report.json, report.md and report.png; return the report.

    Every trained model, stage output and measurement is cached under ``<output>/.cache`` by a
    content hash and verified when reused, so a rerun (or a run after a crash or a kill) redoes only
    what changed; ``force`` recomputes everything. The run is built in a staging folder and published
    into ``<output>/<name>/`` (``folder`` instead of the name: compress check's own run) only once complete:
    a failing run leaves the previous outputs as they were.
    """
    started = time.perf_counter()
    out_dir = output_dir(recipe, output, folder)
    prep = prepare(recipe)
    distributed.init_from_env()
    writer = distributed.is_writer()
    quiet = quiet or not writer
    try:
        report = _run(recipe, prep, out_dir, quiet, force, started, writer)
    except BaseException:
        distributed.shutdown(wait=False)  # never wait for ranks that may be blocked in a collective
        raise
    distributed.shutdown()
    return report


def _run(recipe: Recipe, prep: Prepared, out_dir: Path, quiet: bool, force: bool, started: float,
         writer: bool) -> dict:
    task = task_of(recipe)
    cache = output_cache(out_dir, force)
    if not writer:  # the other ranks train with rank 0 and write nothing of the run (a private scratch folder)
        with tempfile.TemporaryDirectory(prefix="compress-rank-") as scratch_dir:
            build(recipe, prep, Path(scratch_dir), cache, quiet=True, writer=False)
        return {}
    with exclusive(out_dir), staging(out_dir) as stage_dir:
        refuse_planted_links(out_dir, OWNED)  # before any compute: publishing would refuse them at the end
        say(f"[bold]compress[/bold] {recipe.name}: {task.describe(prep)}", quiet)
        built = build(recipe, prep, stage_dir, cache, quiet=quiet, last_good_dir=inside(out_dir, "last_good"))
        report = task.report(recipe, prep, built, stage_dir, cache, quiet)
        report["warnings"] = list(cache.warnings)
        report["run_seconds"] = round(time.perf_counter() - started, 2)
        report["files"] = {"dir": str(out_dir), "model": str(out_dir / "model.onnx"),
                           "report_json": str(out_dir / "report.json"), "report_md": str(out_dir / "report.md"),
                           "plot": str(out_dir / "report.png")}
        report = relocate(report, stage_dir, out_dir)
        report["digests"] = reporting.digests(stage_dir)
        reporting.write(report, stage_dir, task.markdown, task.plot)
        publish(stage_dir, out_dir, OWNED)
    if not quiet:
        task.print_table(report)
    return report


def report_classify(recipe: Recipe, prep: Prepared, built: Built, run_dir: Path, cache: Cache, quiet: bool) -> dict:
    """Measure every model (and the final one on every runtime) and build the classification report."""
    splits = prep.splits
    models, eval_key = measure(recipe, splits, built.measured, cache, quiet=quiet)
    fp32 = fp32_counterpart(built.measured)
    runtimes_key = cache_key("runtimes", eval_key, {fmt: sha256_file(p) for fmt, p in built.final_files.items()},
                             fp32 and sha256_file(fp32))
    runtimes = cache.get_json("runtimes", runtimes_key)
    if runtimes is None:
        from compress.evaluate import evaluate_runtimes

        say(f"[bold]measuring[/bold] the final model on every runtime: {', '.join(built.final_files)}", quiet)
        runtimes = evaluate_runtimes(built.final_files, built.measured[0]["path"], splits, recipe.bench,
                                     seed=recipe.seed, fp32_path=fp32)
        cache.put_json("runtimes", runtimes_key, runtimes)
    # "runtimes": one row per (model, runtime); "mobile_usability" when .ort is made
    return reporting.classify(recipe, split_digest(splits), models, built.stage_log, run_dir, runtimes)


def fp32_counterpart(measured: list[dict]) -> str | None:
    """The fp32 ONNX file the final model was quantized from (the last stage file that is not quantized), or None
    when the final model is itself fp32: every shipped file is held against it (report notes)."""
    final = measured[-1]
    if "mode" not in final["info"] and "weight_bits" not in final["info"]:  # neither quantize nor qat
        return None
    stages = [m for m in measured if m["role"] == "stage" and Path(m["path"]).suffix == ".onnx"]
    src = next((m for m in reversed(stages) if "mode" not in m["info"] and "weight_bits" not in m["info"]), None)
    return str(src["path"]) if src is not None else None


def refuse_planted_links(out_dir: Path, owned: tuple[str, ...]) -> None:
    """A symlink among the names a run replaces (``stages``, ``model.onnx``, ...) is refused before any compute."""
    for name in os.listdir(out_dir):
        if any(fnmatch.fnmatchcase(name, p) for p in owned):
            inside(out_dir, name)  # raises UnsafePathError for a symlink


def relocate(obj, old: Path, new: Path):
    """``obj`` (a report) with every path string under ``old`` (the staging folder) moved under ``new``."""
    prefix = str(old)
    if isinstance(obj, str):
        return str(new) + obj[len(prefix):] if obj == prefix or obj.startswith(prefix + os.sep) else obj
    if isinstance(obj, Path):
        return Path(relocate(str(obj), old, new))
    if isinstance(obj, dict):
        return {k: relocate(v, old, new) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: relocate(getattr(obj, f.name), old, new) for f in dataclasses.fields(obj)})
    if isinstance(obj, (list, tuple)):
        return type(obj)(relocate(v, old, new) for v in obj)
    return obj


@dataclass
class Built:
    """What ``build`` made: the models to measure (teacher, scratch, each stage, final; ``path`` is an ONNX
    file, ``key`` its cache key), the stage log of the report, and the final model's files by format."""

    measured: list[dict]
    stage_log: list[dict]
    final_files: dict[str, str]


def stage_key(recipe, fingerprint: str, i: int, input_key: str, teacher: str) -> str:
    """Stage ``i``'s cache key: the key of its input artifact, the teacher's, its position and config, and the
    digests of the files its config names (teachers' weights, ONNX files, logits): editing such a file in place
    must invalidate the stage's cache entry, as editing the config does."""
    st = recipe.stages[i]
    files = [(str(p), sha256_file(p) if p.is_file() else None) for p in nodes(st) if isinstance(p, Path)]
    return cache_key("stage", input_key, teacher, i, st.model_dump(mode="json", by_alias=True), files,
                     recipe.seed, fingerprint)


def chain_keys(recipe, prep) -> list[str]:
    """Every stage's cache key of the student's chain, computed without running anything (a stage's output key is
    its key; a top-level assistant chain, as ``build`` runs it, makes the student's tutor)."""
    task = task_of(recipe)
    tutor = task.teacher_key(recipe, prep)
    for j, assistant in enumerate(task.assistants(recipe, prep)):
        keys = _keys(recipe, prep, assistant.key, tutor, torch_only=True)
        tutor = cache_key("assistant-id", tutor, j, keys[-1] if keys else assistant.key)
    return _keys(recipe, prep, task.student_key(recipe, prep), tutor)


def _keys(recipe, prep, start: str, tutor: str, torch_only: bool = False) -> list[str]:
    walk, keys, specs = _Chain(recipe, start), [], stages_for(recipe.task)
    for i, st in enumerate(recipe.stages):
        if torch_only and specs[st.type].produces != "torch":
            break
        keys.append(stage_key(recipe, prep.fingerprint, i, walk.input(i), tutor))
        walk.done(i, keys[-1])
    return keys


class _Chain:
    """What feeds each stage (its input key, or its input artifact): the previous stage's output, or, for a branch
    stage right after another branch stage, that stage's own input (StageSpec.branches)."""

    def __init__(self, recipe, start):
        self.specs = [stages_for(recipe.task)[st.type] for st in recipe.stages]
        self.src = self.out = start

    def input(self, i: int):
        side = i > 0 and self.specs[i].branches and self.specs[i - 1].branches
        return self.src if side else self.out

    def done(self, i: int, out) -> None:
        self.src, self.out = self.input(i), out


def build(recipe, prep, out_dir: Path, cache: Cache, *, quiet: bool, writer: bool = True,
          last_good_dir: Path | None = None) -> Built | None:
    """Train (or load from the verified cache) the teacher, the scratch baseline, any assistants and every stage;
    write the model files under ``out_dir`` (a fresh folder: the run's staging folder, or a search variant's);
    measure nothing. None on a rank other than the writer (it only trains). A stage that fails with a model to
    keep saves its last good weights in ``last_good_dir`` (default ``out_dir/last_good``). What differs between
    tasks (data, models, training, export) comes from the recipe's task adapter (``task_of``)."""
    task = task_of(recipe)
    teacher = task.teacher(recipe, prep, cache, quiet)
    measured: list[dict] = []
    stage_entries: list[dict] = []  # measured after the models the stages make on the way

    def add(name: str, role: str, art: Artifact, path: Path, into: list = measured) -> None:
        if not writer:  # other ranks only train
            return
        if art.format == "torch":
            task.export(art.model, path, prep)
        into.append({"name": name, "role": role, "path": Path(art.path if art.format == "onnx" else path),
                     "params": art.params, "macs": art.macs, "lineage": list(art.lineage), "info": dict(art.info),
                     "key": art.key})

    add("teacher", "teacher", teacher, out_dir / "teacher.onnx")
    scratch = task.scratch(recipe, prep, cache, quiet)
    if scratch is not None:
        add("scratch", "scratch", scratch, out_dir / "scratch.onnx")
    run = _StageRun(recipe, prep, task, cache, out_dir, quiet, writer,
                    last_good_dir or inside(out_dir, "last_good"))
    tutor, chain_log = teacher, []
    for j, assistant in enumerate(task.assistants(recipe, prep)):  # teacher -> assistants -> student, each every torch stage
        art, log = run.stages(assistant, tutor, f"assistant{j}", torch_only=True)
        if art is None:
            return None
        chain_log += log
        add(f"assistant{j}", "assistant", art, out_dir / f"assistant{j}.onnx")
        tutor = dataclasses.replace(art, key=cache_key("assistant-id", tutor.key, j, art.key))
    art, stage_log = run.stages(task.student(recipe, prep), tutor, "student", add=partial(add, into=stage_entries))
    if art is None or not writer:  # the other ranks only train
        return None
    stage_log = chain_log + stage_log
    for name, model in run.assistants:  # made by a stage on the way (a distill chain): measured before the stages
        params = sum(p.numel() for p in model.parameters())
        add(name, "assistant", Artifact(name, "torch", model, params=params), out_dir / f"{name}.onnx")
    measured += stage_entries

    final_files = {}  # model.onnx and every runtime file: model.ort, model.pte, model.tflite
    for fmt, src in {"onnx": measured[-1]["path"], **runtime_files(art.info)}.items():
        dst = out_dir / f"model{Path(src).suffix}"
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
        final_files[fmt] = str(dst)
    final_info = {"source": measured[-1]["name"], **({"ort_path": final_files["ort"]} if "ort" in final_files else {}),
                  "files": final_files}
    task.finish(recipe, prep, art, measured, final_files, out_dir)
    measured.append({**measured[-1], "name": "final", "role": "final", "path": Path(final_files["onnx"]),
                     "info": {**measured[-1]["info"], **final_info}})
    return Built(measured, stage_log, final_files)


@dataclass
class _StageRun:
    """The stage loop of one build: every stage in order, each from the verified stage cache when its key is
    there, else run (under a claim, so two processes never compute one entry) and stored."""

    recipe: object
    prep: object
    task: object
    cache: Cache
    out_dir: Path
    quiet: bool
    writer: bool
    last_good_dir: Path
    assistants: list = field(default_factory=list)  # (name, model) that stages made on the way (Artifact.extra)

    def stages(self, art: Artifact, tutor: Artifact, label: str, *, torch_only: bool = False, add=None):
        """Run the stages on ``art`` taught by ``tutor``; returns the last artifact (None on a non-writing rank once
        training is over) and the stage log. ``torch_only``: up to the first stage that leaves torch (an
        assistant of the chain)."""
        recipe, prep, task, writer = self.recipe, self.prep, self.task, self.writer
        specs = stages_for(recipe.task)
        ctx = task.context(recipe, prep, tutor, self.out_dir, self.cache, self.quiet, label)
        last_train = max((i for i, st in enumerate(recipe.stages) if specs[st.type].trains), default=-1)
        alone, log, chain = distributed.world_size() == 1, [], _Chain(recipe, art)
        n = len(recipe.stages)
        for i, st in enumerate(recipe.stages):
            spec = specs[st.type]
            if torch_only and spec.produces != "torch":
                break
            if not writer and i > last_train:
                return None, log
            src = chain.input(i)
            ctx.stage_index = i
            key = ctx.stage_key = stage_key(recipe, prep.fingerprint, i, src.key, tutor.key)
            prefix = f"{i + 1:02d}_{st.type}"
            t0 = time.perf_counter()
            template = task.template(prep, src)
            load = lambda: self.cache.get_stage(key, template, self.out_dir / "stages", prefix)  # noqa: E731
            cached = load() if writer else None
            # Collectives only while every rank is still here (the others leave after the last training stage).
            if i <= last_train and distributed.agree(cached is not None) and cached is None:
                cached = load()  # read-only there: a bad entry raises
            if cached is None:
                with self.cache.claim(STAGE_KIND, key) if writer else contextlib.nullcontext():
                    if alone:  # another process may have computed it while this one waited for the claim
                        cached = load()
                    if cached is None:
                        say(f"[bold cyan]stage {i + 1}/{n}[/bold cyan] {st.type}" + (f" ({label})" if label != "student" else ""),
                            self.quiet)
                        out = task.fresh(self._run(st, i, src, ctx, key), prep, recipe.seed)
                        if writer:
                            self.cache.put_stage(key, out, task.arch)
            if cached is not None:
                say(f"[bold cyan]stage {i + 1}/{n}[/bold cyan] {st.type}: [dim]cached {key}[/dim]", self.quiet)
                out = task.fresh(cached, prep, recipe.seed)
            self.assistants += list(out.extra)
            chain.done(i, out)
            log.append({"index": i + 1, "type": st.type, "config": st.model_dump(mode="json", by_alias=True),
                        "cached": cached is not None, "seconds": round(time.perf_counter() - t0, 2),
                        **({"model": label} if label != "student" else {})})
            if add is not None:
                add(prefix, "stage", out, ctx.stage_path(st.type, ".onnx"))
        return chain.out, log

    def _run(self, st, i: int, art: Artifact, ctx, key: str) -> Artifact:
        """Stage ``i`` on ``art``; a failure names the stage, and keeps the last good weights when it has them."""
        try:
            return dataclasses.replace(stages_for(self.recipe.task)[st.type].fn(art, st, ctx), key=key)
        except CompressError as exc:
            message = f"stage {i + 1} ({st.type}): {exc}"
            if getattr(exc, "model", None) is not None and self.writer:
                from compress.models.checkpoint import save_model

                self.last_good_dir.mkdir(parents=True, exist_ok=True)
                saved = save_model(exc.model, inside(self.last_good_dir, f"{i + 1:02d}_{st.type}.safetensors"))
                message += f" The last good weights are in {saved}."
            raise type(exc)(message) from None


def measure(recipe: Recipe, splits: Splits, measured: list[dict], cache: Cache, *, quiet: bool) -> tuple[list[dict], str]:
    """Test accuracy and interleaved latency of every model in ``measured``, in one session. Returns the report's
    model entries and the cache key: the files measured (by their sha256, with their names and roles), the bench
    settings, the data and the CPU. Keyed by the bytes measured, not by how they were made: a file that changes is
    measured again, whatever its stage key says."""
    eval_key = cache_key("eval", [(m["name"], m["role"], sha256_file(m["path"])) for m in measured],
                         recipe.bench.model_dump(), recipe.seed, splits.fingerprint, cpu_info())
    # Only the measurements are cached; names, paths and stage facts come from this run.
    measurements = cache.get_json("eval", eval_key)
    if not (isinstance(measurements, list) and len(measurements) == len(measured)
            and all(isinstance(e, dict) for e in measurements)):
        say("[bold]measuring[/bold] accuracy on the test split and latency (interleaved)", quiet)
        evaluated = evaluate(measured, splits, recipe.bench, seed=recipe.seed)
        measurements = [{k: v for k, v in e.items() if k not in m} for e, m in zip(evaluated, measured)]
        cache.put_json("eval", eval_key, measurements)
    else:
        say(f"[dim]measurements: cached {eval_key} (--force to measure again)[/dim]", quiet)
    return [{**m, "path": str(m["path"]), "sha256": sha256_file(m["path"]), **got}
            for m, got in zip(measured, measurements)], eval_key


def split_digest(splits: Splits) -> dict:
    return {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test),
            "num_classes": splits.num_classes, "input_shape": list(splits.input_shape),
            "fingerprint": splits.fingerprint, "test_class_counts": np.bincount(splits.test.y).tolist()}


class ClassifyTask:
    """The classification task (images, rows, text labels): what the pipeline asks of a task, for ``task: classify``.
    compress.lm.task.LMTask answers the same questions for language models."""

    name = "classify"
    metric = ("accuracy", True)  # (name, higher is better)
    prepare = staticmethod(prepare_classify)
    validate = staticmethod(validate_classify)
    report = staticmethod(report_classify)

    def describe(self, prep: Prepared) -> str:
        return str(prep.splits.describe())

    # --- the gate (compress check) ---------------------------------------------------------------------

    def remeasure(self, report: dict, final: Path) -> tuple[float | None, str]:
        """Test accuracy of ``final`` from the recipe and data a report names; (None, why) when they cannot load."""
        from compress.recipe import recipe_and_data
        from compress.runtimes.onnxruntime import load

        recipe, splits = recipe_and_data(report, load_data, "fingerprint")
        if recipe is None:
            return None, splits
        test = splits.test
        pred = load(final, threads=0).predict(test.x).argmax(1)
        return float((pred == test.y).mean()), f"re-measured from {final.name} on the test split ({len(test.y)} samples)"

    def disagreement(self, report: dict) -> float:
        """How far report.json and its own file may disagree (CPUs round INT8 kernels differently) before the
        report is called wrong: max(1 point, 3 test samples)."""
        n = sum(report["data"].get("test_class_counts") or [])
        return max(0.01, 3 / n) if n else float("inf")

    def timers(self, files: dict[str, Path], *, batch: int, threads: int) -> dict:
        """One forward pass of a batch of zeros per call, by each file's runtime."""
        from compress.bench import batch_of
        from compress.runtimes import load

        runners = {k: load(p, threads=threads) for k, p in files.items()}
        shape = next(iter(runners.values())).input_shape
        x = batch_of(np.zeros((1, *shape), np.float32), batch)
        return {k: r.timer(x) for k, r in runners.items()}

    markdown = staticmethod(reporting.markdown)  # report.md, report.png and the terminal table
    plot = staticmethod(reporting.plot)
    print_table = staticmethod(reporting.print_table)

    def teacher_key(self, recipe: Recipe, prep: Prepared) -> str:
        """The teacher's spec and training settings, or the digest of the weights it was given."""
        if recipe.teacher.weights:
            return cache_key("teacher-weights", sha256_file(recipe.teacher.weights), prep.splits.fingerprint)
        return cache_key("teacher", recipe.teacher.model.model_dump(), recipe.teacher.train.model_dump(), recipe.seed,
                         prep.splits.fingerprint)

    def student_key(self, recipe: Recipe, prep: Prepared) -> str:
        weights = recipe.student.weights
        return cache_key("student", recipe.student.model.model_dump(), weights and sha256_file(weights), recipe.seed,
                         prep.splits.fingerprint)

    def teacher(self, recipe: Recipe, prep: Prepared, cache: Cache, quiet: bool) -> Artifact:
        t_key, t = self.teacher_key(recipe, prep), recipe.teacher.train
        teacher, info = prep.teacher, {"weights": str(recipe.teacher.weights)}
        if not recipe.teacher.weights:
            teacher, info = train_cached(cache, t_key, teacher, prep.splits, epochs=t.epochs, lr=t.lr,
                                         batch_size=t.batch_size, weight_decay=t.weight_decay, seed=recipe.seed,
                                         desc="teacher", quiet=quiet)
        # The teacher's soft targets, like every measurement, need BatchNorm statistics that match its weights.
        teacher, why = bn.fresh(teacher, prep.splits.train.x, recipe.seed)
        return _torch_artifact("teacher", teacher, recipe.teacher.model, prep, t_key,
                               {**info, **({"bn_recalibrated": why} if why else {})})

    def scratch(self, recipe: Recipe, prep: Prepared, cache: Cache, quiet: bool) -> Artifact | None:
        budget = scratch_budget(recipe)
        if not budget:
            return None
        key = cache_key("scratch", recipe.student.model.model_dump(), budget, recipe.seed, prep.splits.fingerprint)
        scratch, info = train_cached(cache, key, prep.student, prep.splits, seed=recipe.seed, desc="scratch student",
                                     quiet=quiet, **budget)
        return _torch_artifact("scratch", scratch, recipe.student.model, prep, key, {"budget": budget, **info})

    def student(self, recipe: Recipe, prep: Prepared) -> Artifact:
        return _torch_artifact("student", prep.student, recipe.student.model, prep, self.student_key(recipe, prep), {})

    def assistants(self, recipe: Recipe, prep: Prepared) -> list:
        return []  # a distill stage's chain makes its own (compress/stages/distill.py)

    def context(self, recipe: Recipe, prep: Prepared, tutor: Artifact, out_dir: Path, cache: Cache, quiet: bool,
                label: str) -> Context:
        return Context(recipe=recipe, splits=prep.splits, teacher=tutor.model, out_dir=out_dir, quiet=quiet,
                       teacher_key=tutor.key, cache=cache)  # teacher outputs kept on disk

    def template(self, prep: Prepared, src: Artifact) -> torch.nn.Module:
        return prep.student  # a cached checkpoint carries its own (pruned) layer shapes

    def arch(self, model) -> None:
        return None

    def fresh(self, art: Artifact, prep: Prepared, seed: int) -> Artifact:
        """A torch artifact whose BatchNorm statistics match its weights before the next stage, export or
        measurement (compress/bn.py); the stage's info says when they had to be re-estimated."""
        if art.format != "torch" or art.model is None:
            return art
        model, why = bn.fresh(art.model, prep.splits.train.x, seed)
        return dataclasses.replace(art, model=model, info={**art.info, "bn_recalibrated": why}) if why else art

    def export(self, model: torch.nn.Module, path: Path, prep: Prepared) -> None:
        export_onnx(model, prep.splits.input_shape, path)

    def finish(self, recipe: Recipe, prep: Prepared, art: Artifact, measured: list[dict], final_files: dict,
               out_dir: Path) -> None:
        from compress.preprocess import write_model_card  # preprocessing in every ONNX file's metadata; model.json

        write_model_card(recipe, prep.splits, measured, final_files, out_dir)


def _torch_artifact(name: str, model: torch.nn.Module, spec, prep: Prepared, key: str, info: dict) -> Artifact:
    """A model the chain starts from, with its MACs and parameters counted for one sample."""
    macs, params = count_macs_params(model, prep.splits.input_shape)
    return Artifact(name, "torch", model, params=params, macs=macs, key=key,
                    info={"spec": describe_spec(spec), **info})


def task_named(name: str):
    """The task adapter called ``name`` (``classify`` or ``lm``)."""
    if name == "lm":
        from compress.lm.task import LMTask

        return LMTask()
    return ClassifyTask()


def task_of(recipe):
    """The task adapter of a recipe (``recipe.task``)."""
    return task_named(recipe.task)
