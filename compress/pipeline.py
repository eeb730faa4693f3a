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

from compress._io import atomic_path
from compress._onnx import export_onnx
from compress._progress import say
from compress.artifact import Artifact
from compress.bench import cpu_info
from compress.cache import StageCache, cache_key, load_cached, load_json, save_cached, save_json
from compress import distributed
from compress.context import Context
from compress.data import Splits, load_data
from compress.errors import CompressError, DataError, ModelError
from compress.evaluate import evaluate
from compress.models import build_model, check_io, describe_spec, load_weights
from compress.recipe import Recipe, check_chain
from compress.stages.base import STAGES
from compress.stages.prune import count_macs_params, head_table
from compress.stages.train import cross_entropy
from compress.training import fit

__all__ = ["prepare", "validate", "run", "output_dir", "build", "measure", "chain_keys"]


@dataclass
class Prepared:
    splits: Splits
    teacher: torch.nn.Module
    teacher_has_weights: bool
    student: torch.nn.Module


def output_dir(recipe: Recipe, output: str | Path | None = None) -> Path:
    """``<root>/<name>``, after checking (without leaving anything behind) that it can be written."""
    root = Path(output or recipe.output or "exported")
    target = root / recipe.name
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
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in student.modules())
    for i, st in enumerate(recipe.stages):
        if st.type == "prune" and st.importance == "bn_scale" and not has_bn:
            raise recipe.error_at("importance 'bn_scale' needs BatchNorm layers and the student has none; "
                                  "valid choices for this model: l1, l2, taylor", "stages", i, "importance")
        if st.type == "prune" and st.head_ratio > 0 and not head_table(student):
            raise recipe.error_at("'head_ratio' removes attention heads of the built-in transformers (arch: transformer or text_transformer), "
                                  "and the student has none; drop head_ratio", "stages", i, "head_ratio")
    _check_losses(recipe, teacher, student, splits.input_shape, splits.num_classes)
    return Prepared(splits, teacher.eval(), recipe.teacher.weights is not None, student)


def _check_losses(recipe: Recipe, teacher: torch.nn.Module, student: torch.nn.Module, input_shape,
                  num_classes: int) -> None:
    """Every stage's ``loss`` list: layer names exist, shapes can be projected (one forward pass each, no training)."""
    from compress.losses.combine import build_terms

    for i, st in enumerate(recipe.stages):
        _check_teachers(recipe, i, st, teacher, input_shape)
        _check_chain_models(recipe, i, st, input_shape, num_classes)
        if not getattr(st, "loss", None):
            continue
        # the student's teachers: the recipe's (or the last assistant), and itself for born-again generations
        first = teacher
        for spec in getattr(st, "chain", None) or []:
            torch.manual_seed(recipe.seed)
            first = spec.build(input_shape, num_classes).eval()
        teachers = [first] + ([student] if getattr(st, "generations", 1) > 1 else [])
        for t in teachers:
            build_terms(st.loss, t, student, input_shape,
                        {"temperature": st.temperature, "alpha": st.alpha}, at=("stages", i, "loss"), recipe=recipe)


def _check_chain_models(recipe: Recipe, i: int, st, input_shape, num_classes: int) -> None:
    """Every ``chain`` step builds and gives one score per class (a bad factory fails here, not mid-run)."""
    for j, spec in enumerate(getattr(st, "chain", None) or []):
        try:
            spec.build(input_shape, num_classes)
        except ModelError as exc:
            raise recipe.error_at(str(exc), "stages", i, "chain", j) from None


def _check_teachers(recipe: Recipe, i: int, st, teacher: torch.nn.Module, input_shape) -> None:
    """A ``teachers`` list: every member loads and gives one score per class; no layers asked of an ensemble."""
    sources = getattr(st, "teachers", None)
    if not sources or (len(sources) == 1 and sources[0].is_recipe):
        return
    from compress.teachers import member_logits

    splits = load_data(recipe.data, recipe.seed)
    ctx = Context(recipe=recipe, splits=splits, teacher=teacher, out_dir=Path("."), quiet=True)
    for j, src in enumerate(sources):
        try:
            out = member_logits(src, ctx, np.zeros((2, *input_shape), np.float32)) if not src.logits else member_logits(src, ctx)
        except CompressError as exc:
            raise recipe.error_at(str(exc), "stages", i, "teachers", j) from None
        except Exception as exc:  # onnxruntime and factories raise their own types
            raise recipe.error_at(f"{src.describe()}: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                                  "stages", i, "teachers", j) from None
        if out.ndim != 2 or out.shape[1] != splits.num_classes:
            raise recipe.error_at(f"{src.describe()} gives outputs of shape {tuple(out.shape)}; expected "
                                  f"{splits.num_classes} class scores per sample", "stages", i, "teachers", j)
    for j, entry in enumerate(getattr(st, "loss", None) or []):
        if getattr(entry, "pairs", None) or getattr(entry, "teacher", None):
            kinds = ", ".join(s.describe() for s in sources)
            raise recipe.error_at(f"loss '{entry.kind}' reads teacher layers, but this stage's teachers ({kinds}) give "
                                  "only outputs (a black box or an ensemble has no layers to read); use hinton, kl, "
                                  "mse, or rkd without layer names", "stages", i, "loss", j)


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
def _exclusive(out_dir: Path):
    """One run per output folder at a time: a second run fails at once instead of interleaving writes."""
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise CompressError(f"output folder {out_dir} is not writable")
    with open(out_dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CompressError(f"another compress run is writing to {out_dir}; wait for it or use --output") from None
        yield


def _train_cached(cache: Path, key: str, model: torch.nn.Module, splits: Splits, *, epochs: int, lr: float,
                  batch_size: int, weight_decay: float, seed: int, desc: str, quiet: bool,
                  force: bool = False) -> tuple[torch.nn.Module, dict]:
    cached = None if force or not distributed.is_writer() else load_cached(cache, key, model)
    if distributed.agree(cached is not None) and cached is None:  # rank 0 found it: the other ranks load it too
        cached = load_cached(cache, key, model)
    if cached is not None:
        say(f"[dim]{desc}: reusing cached weights {key}[/dim]", quiet)
        return cached, {"cached": True}
    res = fit(model, splits, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, seed=seed,
              loss_fn=cross_entropy, desc=desc, quiet=quiet)
    if distributed.is_writer():
        save_cached(cache, key, res.model)
    return res.model, {"cached": False, "best_epoch": res.best_epoch, "seconds": round(res.seconds, 2)}


def _scratch_budget(recipe: Recipe) -> dict | None:
    """Same architecture, same number of training epochs as the student gets over the whole chain."""
    trained = [st for st in recipe.stages if STAGES[st.type].trains]
    if recipe.baseline == "none" or not trained:
        return None
    # Student-sized training epochs: born-again generations and mutual peers each count (equal compute).
    return {"epochs": sum(st.student_epochs() if hasattr(st, "student_epochs") else st.epochs for st in trained), "lr": trained[0].lr, "batch_size": trained[0].batch_size,
            "weight_decay": trained[0].weight_decay}


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
    if path is None:
        return None
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run(recipe: Recipe, output: str | Path | None = None, quiet: bool = False, force: bool = False) -> dict:
    """Run the recipe; write model files, report.json, report.md and report.png; return the report.

    Every trained model, stage output and measurement is cached under ``<output>/.cache`` by a
    content hash, so a rerun (or a run after a crash or a kill) redoes only what changed;
    ``force`` recomputes everything.
    """
    from compress import report as reporting

    started = time.perf_counter()
    out_dir = output_dir(recipe, output)
    prep = prepare(recipe)
    splits = prep.splits
    cache = out_dir.parent / ".cache"
    distributed.init_from_env()
    writer = distributed.is_writer()
    quiet = quiet or not writer
    try:
        report = _run(recipe, prep, out_dir, cache, quiet, force, started, writer)
    except BaseException:
        distributed.shutdown(wait=False)  # never wait for ranks that may be blocked in a collective
        raise
    distributed.shutdown()
    return report


def _last_training_stage(recipe: Recipe) -> int:
    return max((i for i, st in enumerate(recipe.stages) if STAGES[st.type].trains), default=-1)


def _run(recipe: Recipe, prep: Prepared, out_dir: Path, cache: Path, quiet: bool, force: bool, started: float,
         writer: bool) -> dict:
    from compress import report as reporting

    splits = prep.splits
    with _exclusive(out_dir) if writer else contextlib.nullcontext():
        say(f"[bold]compress[/bold] {recipe.name}: {splits.describe()}", quiet)
        built = build(recipe, prep, out_dir, cache, quiet=quiet, force=force, writer=writer)
        if built is None:
            return {}  # other ranks are done once the last training stage is
        measured, stage_log, final_files = built.measured, built.stage_log, built.final_files
        models, eval_key = measure(recipe, splits, measured, cache, quiet=quiet, force=force)
        runtimes_key = cache_key("runtimes", eval_key, sorted(final_files.items()))
        runtimes = None if force else load_json(cache, "runtimes", runtimes_key)
        if runtimes is None:
            from compress.evaluate import evaluate_runtimes

            say(f"[bold]measuring[/bold] the final model on every runtime: {', '.join(final_files)}", quiet)
            runtimes = evaluate_runtimes(final_files, measured[0]["path"], splits, recipe.bench, seed=recipe.seed)
            save_json(cache, "runtimes", runtimes_key, runtimes)
        report = reporting.build(recipe, split_digest(splits), models, stage_log)
        report.update(runtimes)  # "runtimes": one row per (model, runtime); "mobile_usability" when .ort is made
        report["run_seconds"] = round(time.perf_counter() - started, 2)
        final_path = out_dir / "model.onnx"
        report["files"] = {"dir": str(out_dir), "model": str(final_path), "report_json": str(out_dir / "report.json"),
                           "report_md": str(out_dir / "report.md"), "plot": str(out_dir / "report.png")}
        reporting.write(report, out_dir)
        if not quiet:
            reporting.print_table(report)
        return report


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


def build(recipe: Recipe, prep: Prepared, out_dir: Path, cache: Path, *, quiet: bool, force: bool,
          writer: bool = True) -> Built | None:
    """Train (or load from the cache) the teacher, the scratch baseline and every stage; write the model
    files under ``out_dir``; measure nothing. None on a rank other than the writer (it only trains)."""
    splits = prep.splits
    if writer and (out_dir / "stages").exists():
        shutil.rmtree(out_dir / "stages")  # files of an earlier run would be mistaken for this one's
    teacher, teacher_info = prep.teacher, {"weights": str(recipe.teacher.weights)} if prep.teacher_has_weights else {}
    t_key = teacher_key(recipe, prep)
    if not prep.teacher_has_weights:
        t = recipe.teacher.train
        teacher, teacher_info = _train_cached(cache, t_key, teacher, splits, epochs=t.epochs, lr=t.lr,
                                              batch_size=t.batch_size, weight_decay=t.weight_decay,
                                              seed=recipe.seed, desc="teacher", quiet=quiet, force=force)
    ctx = Context(recipe=recipe, splits=splits, teacher=teacher, out_dir=out_dir, quiet=quiet,
                  teacher_key=t_key, cache_dir=None if force else cache)  # teacher outputs kept on disk
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
    budget = _scratch_budget(recipe)
    if budget:
        key = cache_key("scratch", recipe.student.model.model_dump(), budget, recipe.seed, splits.fingerprint)
        scratch, info = _train_cached(cache, key, prep.student, splits, seed=recipe.seed, desc="scratch student",
                                      quiet=quiet, force=force, **budget)
        add("scratch", "scratch", Artifact("scratch", "torch", scratch, params=s_params, macs=s_macs, key=key),
            out_dir / "scratch.onnx", {"spec": describe_spec(recipe.student.model), "budget": budget, **info})

    art = Artifact("student", "torch", prep.student, params=s_params, macs=s_macs,
                   info={"spec": describe_spec(recipe.student.model)}, key=student_key(recipe, splits))
    stage_cache = StageCache(cache, enabled=not force)
    stage_log = []
    last_train = _last_training_stage(recipe)
    for i, st in enumerate(recipe.stages):
        if not writer and i > last_train:
            return None
        ctx.stage_index = i
        config = st.model_dump(mode="json", by_alias=True)
        key = stage_key(recipe, splits, i, art.key, t_key)
        t0 = time.perf_counter()
        # Collectives only while every rank is still here (the others leave after the last training stage).
        hit = distributed.agree(stage_cache.has(key)) if i <= last_train else stage_cache.has(key)
        cached = stage_cache.load(key, prep.student, out_dir / "stages") if hit else None
        if cached is not None:
            say(f"[bold cyan]stage {i + 1}/{len(recipe.stages)}[/bold cyan] {st.type}: [dim]cached {key}[/dim]", quiet)
            art = cached
        else:
            say(f"[bold cyan]stage {i + 1}/{len(recipe.stages)}[/bold cyan] {st.type}", quiet)
            try:
                art = dataclasses.replace(STAGES[st.type].fn(art, st, ctx), key=key)
            except CompressError as exc:
                message = f"stage {i + 1} ({st.type}): {exc}"
                if getattr(exc, "model", None) is not None and writer:
                    from compress.models.checkpoint import save_model

                    saved = save_model(exc.model, out_dir / "stages" / f"{i + 1:02d}_{st.type}.last_good.safetensors")
                    message += f" The last good weights are in {saved}."
                raise type(exc)(message) from None
            if writer:
                stage_cache.save(key, art)
        stage_log.append({"index": i + 1, "type": st.type, "config": config, "cached": cached is not None,
                          "seconds": round(time.perf_counter() - t0, 2)})
        add(f"{i + 1:02d}_{st.type}", "stage", art, ctx.stage_path(st.type, ".onnx"))
    if not writer:
        return None

    final_src = measured[-1]["path"]
    final_path = out_dir / "model.onnx"
    with atomic_path(final_path) as tmp:
        shutil.copyfile(final_src, tmp)
    final_info = {"source": measured[-1]["name"]}
    ort_src = art.info.get("ort_path")
    if ort_src:
        with atomic_path(out_dir / "model.ort") as tmp:
            shutil.copyfile(ort_src, tmp)
        final_info["ort_path"] = str(out_dir / "model.ort")
    final_files = {"onnx": str(final_path)}
    for fmt, src in (art.info.get("files") or {}).items():  # every runtime file: model.ort, model.pte, model.tflite
        dst = out_dir / f"model{Path(src).suffix}"
        if fmt != "ort":
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
        final_files[fmt] = str(dst)
    final_info["files"] = final_files
    measured.append({**measured[-1], "name": "final", "role": "final", "path": final_path,
                     "info": {**measured[-1]["info"], **final_info}})
    return Built(measured, stage_log, final_files)


def measure_key(recipe: Recipe, splits: Splits, measured: list[dict]) -> str:
    """The measurements' cache key: the models (names, roles, keys), the bench settings, the data and the CPU."""
    return cache_key("eval", [(m["name"], m["role"], m["key"]) for m in measured], recipe.bench.model_dump(),
                     recipe.seed, splits.fingerprint, cpu_info())


def measure(recipe: Recipe, splits: Splits, measured: list[dict], cache: Path, *, quiet: bool,
            force: bool) -> tuple[list[dict], str]:
    """Test accuracy and interleaved latency of every model in ``measured``, in one session (cached by the
    models' keys, the bench settings and the CPU). Returns the report's model entries and the cache key."""
    eval_key = measure_key(recipe, splits, measured)
    # Only the measurements are cached; names, paths and stage facts come from this run.
    measurements = None if force else load_json(cache, "eval", eval_key)
    if measurements is None:
        say("[bold]measuring[/bold] accuracy on the test split and latency (interleaved)", quiet)
        evaluated = evaluate(measured, splits, recipe.bench, seed=recipe.seed)
        measurements = [{k: v for k, v in e.items() if k not in m} for e, m in zip(evaluated, measured)]
        save_json(cache, "eval", eval_key, measurements)
    else:
        say(f"[dim]measurements: cached {eval_key} (--force to measure again)[/dim]", quiet)
    return [{**m, "path": str(m["path"]), **got} for m, got in zip(measured, measurements)], eval_key


def split_digest(splits: Splits) -> dict:
    return {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test),
            "num_classes": splits.num_classes, "input_shape": list(splits.input_shape),
            "fingerprint": splits.fingerprint, "test_class_counts": np.bincount(splits.test.y).tolist()}
