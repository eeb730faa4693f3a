"""``check`` + ``run``: the whole chain. Everything that can fail without compute fails in ``prepare``."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from compress._io import atomic_path, claim_file, inside, publish, staging
from compress._onnx import export_onnx
from compress._progress import say
from compress.artifact import Artifact
from compress.bench import cpu_info
from compress.cache import Cache, StageCache, cache_key, runtime_files, sha256_file
from compress import bn, distributed
from compress.context import Context
from compress.data import Splits, load_data
from compress.errors import CompressError, DataError, ModelError
from compress.evaluate import evaluate
from compress.models import build_model, check_io, describe_spec, load_weights
from compress.recipe import Recipe, check_chain
from compress.stages.base import STAGES, CheckContext
from compress.stages.prune import count_macs_params
from compress.stages.train import cross_entropy
from compress.training import fit

__all__ = ["prepare", "validate", "run", "output_dir", "output_cache", "exclusive", "build", "measure", "chain_keys",
           "file_digest", "relocate", "refuse_planted_links", "scratch_budget", "OWNED"]

# Names a vision run writes in its folder: replaced as a whole when a run is published (compress._io.publish).
OWNED = ("teacher.onnx", "scratch.onnx", "model.*", "report.json", "report.md", "report.png", "stages", "last_good")


@dataclass
class Prepared:
    splits: Splits
    teacher: torch.nn.Module
    teacher_has_weights: bool
    student: torch.nn.Module


def output_dir(recipe: Recipe, output: str | Path | None = None, folder: str | None = None) -> Path:
    """``<root>/<name>`` (or ``<root>/<folder>``), after checking (without leaving anything behind) that it can be
    written. The root is ``--output`` (or the recipe's ``output``, else ``exported``); it may be a symlink the
    user made, but nothing below it may be (compress._io.inside)."""
    root = Path(output or recipe.output or "exported")
    target = inside(root, folder or recipe.name)
    for p in (root, target):
        if p.exists() and not p.is_dir():
            raise CompressError(f"output path {p} is a file, not a folder; pass --output DIR")
    existing = next(p for p in (target, *target.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise CompressError(f"output path {existing} is a file, not a folder; pass --output DIR")
    import tempfile

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


def prepare(recipe: Recipe) -> Prepared:
    """Check everything that can be checked without training: chain, files, data, shapes, weights.

    Every problem is raised as a RecipeError at the recipe key that caused it.
    """
    check_chain(recipe)
    try:
        splits = load_data(recipe.data, recipe.seed)
    except DataError as exc:
        raise recipe.error_at(str(exc), "data", "path" if recipe.data.path else "source") from None
    teacher = _model_for(recipe, "teacher", splits, seed=recipe.seed)
    student = _model_for(recipe, "student", splits, seed=recipe.seed + 1)  # the scratch baseline starts here too
    for i, st in enumerate(recipe.stages):  # each stage's own rules (its StageSpec.check)
        spec = STAGES[st.type]
        if spec.check:
            spec.check(st, CheckContext(recipe, i, teacher, student, splits))
    return Prepared(splits, teacher.eval(), recipe.teacher.weights is not None, student)


def _model_for(recipe: Recipe, role: str, splits: Splits, seed: int) -> torch.nn.Module:
    cfg = getattr(recipe, role)
    torch.manual_seed(seed)
    try:
        model = build_model(cfg.model, splits.input_shape, splits.num_classes)
        check_io(model, splits.input_shape, splits.num_classes, f"{role} {describe_spec(cfg.model)}")
    except ModelError as exc:
        raise recipe.error_at(str(exc), role, "model") from None
    if cfg.weights is not None:
        try:
            load_weights(model, cfg.weights)
        except ModelError as exc:
            raise recipe.error_at(str(exc), role, "weights") from None
    return model


def validate(recipe: Recipe, output: str | Path | None = None) -> list[str]:
    """What a run would do, as lines; raises the first problem found. Trains and writes nothing."""
    target = output_dir(recipe, output)
    p = prepare(recipe)
    t_macs, t_params = count_macs_params(p.teacher, p.splits.input_shape)
    s_macs, s_params = count_macs_params(p.student, p.splits.input_shape)
    lines = [f"output: {target}", f"data: {p.splits.describe()}",
             f"teacher: {describe_spec(recipe.teacher.model)}, {t_params:,} params, {t_macs:,} MACs, "
             + ("weights from " + str(recipe.teacher.weights) if p.teacher_has_weights else f"trained for {recipe.teacher.train.epochs} epochs"),
             f"student: {describe_spec(recipe.student.model)}, {s_params:,} params, {s_macs:,} MACs"]
    produced = "torch"
    for i, st in enumerate(recipe.stages):
        spec = STAGES[st.type]
        lines.append(f"stage {i + 1}: {st.type} ({produced} -> {spec.produces})")
        produced = spec.produces
    return lines


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
    writer = distributed.is_writer()
    cached = cache.get_weights("weights", key, model) if writer else None
    if distributed.agree(cached is not None) and cached is None:  # rank 0 found it: the other ranks load it too
        cached = cache.get_weights("weights", key, model)  # a read-only cache there: a damaged entry raises
    if cached is not None:
        say(f"[dim]{desc}: reusing cached weights {key}[/dim]", quiet)
        return cached, {"cached": True, **_trained_info(cache, key)}
    alone = distributed.world_size() == 1
    with cache.claim("weights", key) if writer else contextlib.nullcontext():
        again = cache.get_weights("weights", key, model) if alone else None  # another worker may have trained it
        if again is not None:
            say(f"[dim]{desc}: reusing cached weights {key} (trained by another process)[/dim]", quiet)
            return again, {"cached": True, **_trained_info(cache, key)}
        from compress.stages.distill import AugmentConfig, augmenter

        res = fit(model, splits, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, seed=seed,
                  loss_fn=cross_entropy, desc=desc, quiet=quiet,
                  augment=augmenter(AugmentConfig(**augment), splits.input_shape) if augment else None)
        info = {k: v for k, v in res.info.items() if k in ("best_epoch", "bn_recalibrated")}
        if writer:
            cache.put_weights("weights", key, res.model, meta={"info": info})
    return res.model, {"cached": False, **info, "seconds": round(res.seconds, 2)}


def _trained_info(cache: Cache, key: str) -> dict:
    """What the training that made a cached entry reported (best epoch, BatchNorm recalibration)."""
    entry = cache.get("weights", key)
    info = entry.meta.get("info") if entry is not None else None
    return {k: v for k, v in info.items() if k in ("best_epoch", "bn_recalibrated")} if isinstance(info, dict) else {}


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


def _named_files(cfg) -> list:
    """Digests of the files a stage config names (teachers' weights, ONNX files, logits): editing such a
    file in place must invalidate the stage's cache entry, as editing the config does."""
    from pydantic import BaseModel

    found: list = []

    def walk(value) -> None:
        if isinstance(value, Path):
            found.append((str(value), file_digest(value) if value.is_file() else None))
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)

    walk(cfg)
    return found


def file_digest(path: Path | None) -> str | None:
    """sha256 of a file's bytes (weights given by path are part of every cache key downstream)."""
    return None if path is None else sha256_file(path)


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


def _last_training_stage(recipe: Recipe) -> int:
    return max((i for i, st in enumerate(recipe.stages) if STAGES[st.type].trains), default=-1)


def _run(recipe: Recipe, prep: Prepared, out_dir: Path, quiet: bool, force: bool, started: float,
         writer: bool) -> dict:
    from compress import report as reporting

    splits = prep.splits
    cache = output_cache(out_dir, force)
    if not writer:  # the other ranks train with rank 0 and write nothing of the run (a private scratch folder)
        import tempfile

        with tempfile.TemporaryDirectory(prefix="compress-rank-") as scratch_dir:
            build(recipe, prep, Path(scratch_dir), cache, quiet=True, writer=False)
        return {}
    with exclusive(out_dir), staging(out_dir) as stage_dir:
        refuse_planted_links(out_dir, OWNED)  # before any compute: publishing would refuse them at the end
        say(f"[bold]compress[/bold] {recipe.name}: {splits.describe()}", quiet)
        built = build(recipe, prep, stage_dir, cache, quiet=quiet, last_good_dir=inside(out_dir, "last_good"))
        models, eval_key = measure(recipe, splits, built.measured, cache, quiet=quiet)
        fp32 = fp32_counterpart(built.measured)
        runtimes_key = cache_key("runtimes", eval_key, {fmt: file_digest(Path(p)) for fmt, p in built.final_files.items()},
                                 fp32 and file_digest(Path(fp32)))
        runtimes = cache.get_json("runtimes", runtimes_key)
        if runtimes is None:
            from compress.evaluate import evaluate_runtimes

            say(f"[bold]measuring[/bold] the final model on every runtime: {', '.join(built.final_files)}", quiet)
            runtimes = evaluate_runtimes(built.final_files, built.measured[0]["path"], splits, recipe.bench,
                                         seed=recipe.seed, fp32_path=fp32)
            cache.put_json("runtimes", runtimes_key, runtimes)
        # "runtimes": one row per (model, runtime); "mobile_usability" when .ort is made
        report = reporting.build(recipe, split_digest(splits), models, built.stage_log, stage_dir, runtimes)
        report["warnings"] = list(cache.warnings)
        report["run_seconds"] = round(time.perf_counter() - started, 2)
        report["files"] = {"dir": str(out_dir), "model": str(out_dir / "model.onnx"),
                           "report_json": str(out_dir / "report.json"), "report_md": str(out_dir / "report.md"),
                           "plot": str(out_dir / "report.png")}
        report = relocate(report, stage_dir, out_dir)
        report["digests"] = reporting.digests(stage_dir)
        reporting.write(report, stage_dir)
        publish(stage_dir, out_dir, OWNED)
    if not quiet:
        reporting.print_table(report)
    return report


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
    import fnmatch

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


def teacher_key(recipe: Recipe, prep: Prepared) -> str:
    """The teacher's cache key: its spec and training settings, or the digest of the weights it was given."""
    if prep.teacher_has_weights:
        return cache_key("teacher-weights", file_digest(recipe.teacher.weights), prep.splits.fingerprint)
    return cache_key("teacher", recipe.teacher.model.model_dump(), recipe.teacher.train.model_dump(), recipe.seed,
                     prep.splits.fingerprint)


def student_key(recipe: Recipe, splits: Splits) -> str:
    return cache_key("student", recipe.student.model.model_dump(), file_digest(recipe.student.weights),
                     recipe.seed, splits.fingerprint)


def stage_key(recipe: Recipe, splits: Splits, i: int, input_key: str, teacher: str) -> str:
    """Stage ``i``'s cache key: the key of its input artifact, the teacher's, its position and config."""
    st = recipe.stages[i]
    return cache_key("stage", input_key, teacher, i, st.model_dump(mode="json", by_alias=True), _named_files(st),
                     recipe.seed, splits.fingerprint)


def chain_keys(recipe: Recipe, prep: Prepared) -> list[str]:
    """Every stage's cache key, computed without running anything (a stage's output key is its key)."""
    t_key, key, keys = teacher_key(recipe, prep), student_key(recipe, prep.splits), []
    for i in range(len(recipe.stages)):
        key = stage_key(recipe, prep.splits, i, key, t_key)
        keys.append(key)
    return keys


def build(recipe: Recipe, prep: Prepared, out_dir: Path, cache: Cache, *, quiet: bool, writer: bool = True,
          last_good_dir: Path | None = None) -> Built | None:
    """Train (or load from the verified cache) the teacher, the scratch baseline and every stage; write the
    model files under ``out_dir`` (a fresh folder: the run's staging folder, or a search variant's); measure
    nothing. None on a rank other than the writer (it only trains). A stage that fails with a model to keep
    saves its last good weights in ``last_good_dir`` (default ``out_dir/last_good``)."""
    splits = prep.splits
    teacher, teacher_info = prep.teacher, {"weights": str(recipe.teacher.weights)} if prep.teacher_has_weights else {}
    t_key = teacher_key(recipe, prep)
    if not prep.teacher_has_weights:
        t = recipe.teacher.train
        teacher, teacher_info = train_cached(cache, t_key, teacher, splits, epochs=t.epochs, lr=t.lr,
                                             batch_size=t.batch_size, weight_decay=t.weight_decay,
                                             seed=recipe.seed, desc="teacher", quiet=quiet)
    # The teacher's soft targets, like every measurement, need BatchNorm statistics that match its weights.
    teacher, why = bn.fresh(teacher, splits.train.x, recipe.seed)
    if why:
        teacher_info = {**teacher_info, "bn_recalibrated": why}
    ctx = Context(recipe=recipe, splits=splits, teacher=teacher, out_dir=out_dir, quiet=quiet,
                  teacher_key=t_key, cache=cache)  # teacher outputs kept on disk
    measured: list[dict] = []

    def add(name: str, role: str, art: Artifact, path: Path, info: dict | None = None) -> None:
        if not writer:  # other ranks only train
            return
        if art.format == "torch":
            export_onnx(art.model, splits.input_shape, path)
        measured.append({"name": name, "role": role, "path": Path(art.path if art.format == "onnx" else path),
                         "params": art.params, "macs": art.macs, "lineage": list(art.lineage),
                         "info": {**(info or {}), **art.info}, "key": art.key})

    t_macs, t_params = count_macs_params(teacher, splits.input_shape)
    add("teacher", "teacher", Artifact("teacher", "torch", teacher, params=t_params, macs=t_macs, key=t_key),
        out_dir / "teacher.onnx", {"spec": describe_spec(recipe.teacher.model), **teacher_info})

    s_macs, s_params = count_macs_params(prep.student, splits.input_shape)
    budget = scratch_budget(recipe)
    if budget:
        key = cache_key("scratch", recipe.student.model.model_dump(), budget, recipe.seed, splits.fingerprint)
        scratch, info = train_cached(cache, key, prep.student, splits, seed=recipe.seed, desc="scratch student",
                                     quiet=quiet, **budget)
        add("scratch", "scratch", Artifact("scratch", "torch", scratch, params=s_params, macs=s_macs, key=key),
            out_dir / "scratch.onnx", {"spec": describe_spec(recipe.student.model), "budget": budget, **info})

    art = Artifact("student", "torch", prep.student, params=s_params, macs=s_macs,
                   info={"spec": describe_spec(recipe.student.model)}, key=student_key(recipe, splits))
    stage_cache = StageCache(cache)
    stage_log = []
    last_train = _last_training_stage(recipe)
    alone = distributed.world_size() == 1
    for i, st in enumerate(recipe.stages):
        if not writer and i > last_train:
            return None
        ctx.stage_index = i
        config = st.model_dump(mode="json", by_alias=True)
        key = stage_key(recipe, splits, i, art.key, t_key)
        prefix = f"{i + 1:02d}_{st.type}"
        t0 = time.perf_counter()
        stages_dir = out_dir / "stages"
        cached = stage_cache.load(key, prep.student, stages_dir, prefix) if writer else None
        # Collectives only while every rank is still here (the others leave after the last training stage).
        if i <= last_train and distributed.agree(cached is not None) and cached is None:
            cached = stage_cache.load(key, prep.student, stages_dir, prefix)  # read-only there: a bad entry raises
        if cached is None:
            with cache.claim(StageCache.KIND, key) if writer else contextlib.nullcontext():
                if alone:  # another process may have computed it while this one waited for the claim
                    cached = stage_cache.load(key, prep.student, stages_dir, prefix)
                if cached is None:
                    say(f"[bold cyan]stage {i + 1}/{len(recipe.stages)}[/bold cyan] {st.type}", quiet)
                    art = _fresh_bn(_run_stage(recipe, st, i, art, ctx, key, writer,
                                               last_good_dir or inside(out_dir, "last_good")), splits, recipe.seed)
                    if writer:
                        stage_cache.save(key, art)
        if cached is not None:
            say(f"[bold cyan]stage {i + 1}/{len(recipe.stages)}[/bold cyan] {st.type}: [dim]cached {key}[/dim]", quiet)
            art = _fresh_bn(cached, splits, recipe.seed)
        stage_log.append({"index": i + 1, "type": st.type, "config": config, "cached": cached is not None,
                          "seconds": round(time.perf_counter() - t0, 2)})
        add(prefix, "stage", art, ctx.stage_path(st.type, ".onnx"))
    if not writer:
        return None

    final_src = measured[-1]["path"]
    final_path = out_dir / "model.onnx"
    with atomic_path(final_path) as tmp:
        shutil.copyfile(final_src, tmp)
    final_info = {"source": measured[-1]["name"]}
    final_files = {"onnx": str(final_path)}
    for fmt, src in runtime_files(art.info).items():  # every runtime file: model.ort, model.pte, model.tflite
        dst = out_dir / f"model{Path(src).suffix}"
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
        final_files[fmt] = str(dst)
    if "ort" in final_files:
        final_info["ort_path"] = final_files["ort"]
    final_info["files"] = final_files
    from compress.preprocess import write_model_card  # preprocessing in every ONNX file's metadata; model.json
    write_model_card(recipe, splits, measured, final_files, out_dir)
    measured.append({**measured[-1], "name": "final", "role": "final", "path": final_path,
                     "info": {**measured[-1]["info"], **final_info}})
    return Built(measured, stage_log, final_files)


def _fresh_bn(art: Artifact, splits: Splits, seed: int) -> Artifact:
    """A torch artifact whose BatchNorm statistics match its weights before the next stage, export or measurement
    (compress/bn.py); the stage's info says when they had to be re-estimated."""
    if art.format != "torch" or art.model is None:
        return art
    model, why = bn.fresh(art.model, splits.train.x, seed)
    return dataclasses.replace(art, model=model, info={**art.info, "bn_recalibrated": why}) if why else art


def _run_stage(recipe: Recipe, st, i: int, art: Artifact, ctx: Context, key: str, writer: bool,
               last_good_dir: Path) -> Artifact:
    """Stage ``i`` on ``art``; a failure names the stage, and keeps the last good weights when it has them."""
    try:
        return dataclasses.replace(STAGES[st.type].fn(art, st, ctx), key=key)
    except CompressError as exc:
        message = f"stage {i + 1} ({st.type}): {exc}"
        if getattr(exc, "model", None) is not None and writer:
            from compress.models.checkpoint import save_model

            last_good_dir.mkdir(parents=True, exist_ok=True)
            saved = save_model(exc.model, inside(last_good_dir, f"{i + 1:02d}_{st.type}.safetensors"))
            message += f" The last good weights are in {saved}."
        raise type(exc)(message) from None


def measure_key(recipe: Recipe, splits: Splits, measured: list[dict]) -> str:
    """The measurements' cache key: the files measured (by their sha256, with their names and roles), the
    bench settings, the data and the CPU. Keyed by the bytes measured, not by how they were made: a file
    that changes is measured again, whatever its stage key says."""
    return cache_key("eval", [(m["name"], m["role"], file_digest(Path(m["path"]))) for m in measured],
                     recipe.bench.model_dump(), recipe.seed, splits.fingerprint, cpu_info())


def measure(recipe: Recipe, splits: Splits, measured: list[dict], cache: Cache, *, quiet: bool) -> tuple[list[dict], str]:
    """Test accuracy and interleaved latency of every model in ``measured``, in one session (cached by the
    files' digests, the bench settings and the CPU). Returns the report's model entries and the cache key."""
    eval_key = measure_key(recipe, splits, measured)
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
    return [{**m, "path": str(m["path"]), "sha256": file_digest(Path(m["path"])), **got}
            for m, got in zip(measured, measurements)], eval_key


def split_digest(splits: Splits) -> dict:
    return {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test),
            "num_classes": splits.num_classes, "input_shape": list(splits.input_shape),
            "fingerprint": splits.fingerprint, "test_class_counts": np.bincount(splits.test.y).tolist()}
