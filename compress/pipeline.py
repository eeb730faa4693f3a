"""``check`` + ``run``: the whole chain. Everything that can fail without compute fails in ``prepare``."""

from __future__ import annotations

import contextlib
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
from compress.cache import cache_key, load_cached, save_cached
from compress.context import Context
from compress.data import Splits, load_data
from compress.errors import CompressError, RecipeError
from compress.evaluate import evaluate
from compress.models import build_model, check_io, describe_spec, load_weights
from compress.recipe import Recipe, check_chain
from compress.stages.base import STAGES
from compress.stages.prune import count_macs_params
from compress.stages.train import cross_entropy
from compress.training import fit

__all__ = ["prepare", "validate", "run", "output_dir"]


@dataclass
class Prepared:
    splits: Splits
    teacher: torch.nn.Module
    teacher_has_weights: bool
    student: torch.nn.Module


def output_dir(recipe: Recipe, output: str | Path | None = None) -> Path:
    root = Path(output or recipe.output or "exported")
    if root.exists() and not root.is_dir():
        raise CompressError(f"output path {root} is a file, not a folder; pass --output DIR")
    return root / recipe.name


def prepare(recipe: Recipe) -> Prepared:
    """Check everything that can be checked without training: chain, files, data, shapes, weights."""
    check_chain(recipe)
    splits = load_data(recipe.data, recipe.seed)
    torch.manual_seed(recipe.seed)
    teacher = build_model(recipe.teacher.model, splits.input_shape, splits.num_classes)
    check_io(teacher, splits.input_shape, splits.num_classes, f"teacher {describe_spec(recipe.teacher.model)}")
    if recipe.teacher.weights is not None:
        load_weights(teacher, recipe.teacher.weights)
    torch.manual_seed(recipe.seed + 1)  # the scratch baseline starts from this same initialisation
    student = build_model(recipe.student.model, splits.input_shape, splits.num_classes)
    check_io(student, splits.input_shape, splits.num_classes, f"student {describe_spec(recipe.student.model)}")
    if recipe.student.weights is not None:
        load_weights(student, recipe.student.weights)
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in student.modules())
    for i, st in enumerate(recipe.stages):
        if st.type == "prune" and st.importance == "bn_scale" and not has_bn:
            raise RecipeError("importance 'bn_scale' needs BatchNorm layers and the student has none; "
                              "valid choices for this model: l1, l2, taylor", recipe.source_file, None,
                              f"stages[{i}].importance")
    return Prepared(splits, teacher.eval(), recipe.teacher.weights is not None, student)


def validate(recipe: Recipe) -> list[str]:
    """What a run would do, as lines; raises the first problem found."""
    p = prepare(recipe)
    t_macs, t_params = count_macs_params(p.teacher, p.splits.input_shape)
    s_macs, s_params = count_macs_params(p.student, p.splits.input_shape)
    lines = [f"data: {p.splits.describe()}",
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
                  batch_size: int, weight_decay: float, seed: int, desc: str, quiet: bool) -> tuple[torch.nn.Module, dict]:
    cached = load_cached(cache, key, model)
    if cached is not None:
        say(f"[dim]{desc}: reusing cached weights {key}[/dim]", quiet)
        return cached, {"cached": True}
    res = fit(model, splits, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, seed=seed,
              loss_fn=cross_entropy, desc=desc, quiet=quiet)
    save_cached(cache, key, res.model)
    return res.model, {"cached": False, "best_epoch": res.best_epoch, "seconds": round(res.seconds, 2)}


def _scratch_budget(recipe: Recipe) -> dict | None:
    """Same architecture, same number of training epochs as the student gets over the whole chain."""
    trained = [st for st in recipe.stages if STAGES[st.type].trains]
    if recipe.baseline == "none" or not trained:
        return None
    return {"epochs": sum(st.epochs for st in trained), "lr": trained[0].lr, "batch_size": trained[0].batch_size,
            "weight_decay": trained[0].weight_decay}


def run(recipe: Recipe, output: str | Path | None = None, quiet: bool = False) -> dict:
    """Run the recipe; write model files, report.json, report.md and report.png; return the report."""
    from compress import report as reporting

    started = time.perf_counter()
    out_dir = output_dir(recipe, output)
    prep = prepare(recipe)
    splits = prep.splits
    cache = out_dir.parent / ".cache"
    with _exclusive(out_dir):
        if (out_dir / "stages").exists():
            shutil.rmtree(out_dir / "stages")  # files of an earlier run would be mistaken for this one's
        say(f"[bold]compress[/bold] {recipe.name}: {splits.describe()}", quiet)
        teacher, teacher_info = prep.teacher, {"weights": str(recipe.teacher.weights)} if prep.teacher_has_weights else {}
        if not prep.teacher_has_weights:
            t = recipe.teacher.train
            key = cache_key("teacher", recipe.teacher.model.model_dump(), t.model_dump(), recipe.seed, splits.fingerprint)
            teacher, teacher_info = _train_cached(cache, key, teacher, splits, epochs=t.epochs, lr=t.lr,
                                                  batch_size=t.batch_size, weight_decay=t.weight_decay,
                                                  seed=recipe.seed, desc="teacher", quiet=quiet)
        ctx = Context(recipe=recipe, splits=splits, teacher=teacher, out_dir=out_dir, quiet=quiet)
        measured: list[dict] = []

        def measure(name: str, role: str, art: Artifact, path: Path, info: dict | None = None) -> None:
            if art.format == "torch":
                export_onnx(art.model, splits.input_shape, path)
            measured.append({"name": name, "role": role, "path": Path(art.path if art.format == "onnx" else path),
                             "params": art.params, "macs": art.macs, "lineage": list(art.lineage),
                             "info": {**(info or {}), **art.info}})

        t_macs, t_params = count_macs_params(teacher, splits.input_shape)
        measure("teacher", "teacher", Artifact("teacher", "torch", teacher, params=t_params, macs=t_macs),
                out_dir / "teacher.onnx", {"spec": describe_spec(recipe.teacher.model), **teacher_info})

        s_macs, s_params = count_macs_params(prep.student, splits.input_shape)
        budget = _scratch_budget(recipe)
        if budget:
            key = cache_key("scratch", recipe.student.model.model_dump(), budget, recipe.seed, splits.fingerprint)
            scratch, info = _train_cached(cache, key, prep.student, splits, seed=recipe.seed, desc="scratch student",
                                          quiet=quiet, **budget)
            measure("scratch", "scratch", Artifact("scratch", "torch", scratch, params=s_params, macs=s_macs),
                    out_dir / "scratch.onnx", {"spec": describe_spec(recipe.student.model), "budget": budget, **info})

        art = Artifact("student", "torch", prep.student, params=s_params, macs=s_macs,
                       info={"spec": describe_spec(recipe.student.model)})
        stage_log = []
        for i, st in enumerate(recipe.stages):
            ctx.stage_index = i
            say(f"[bold cyan]stage {i + 1}/{len(recipe.stages)}[/bold cyan] {st.type}", quiet)
            t0 = time.perf_counter()
            try:
                art = STAGES[st.type].fn(art, st, ctx)
            except CompressError as exc:
                raise type(exc)(f"stage {i + 1} ({st.type}): {exc}") from None
            stage_log.append({"index": i + 1, "type": st.type, "config": st.model_dump(by_alias=True),
                              "seconds": round(time.perf_counter() - t0, 2)})
            measure(f"{i + 1:02d}_{st.type}", "stage", art, ctx.stage_path(st.type, ".onnx"))

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
        measured.append({**measured[-1], "name": "final", "role": "final", "path": final_path,
                         "info": {**measured[-1]["info"], **final_info}})

        say("[bold]measuring[/bold] accuracy on the test split and latency (interleaved)", quiet)
        models = evaluate(measured, splits, recipe.bench, seed=recipe.seed)
        report = reporting.build(recipe, split_digest(splits), models, stage_log)
        report["run_seconds"] = round(time.perf_counter() - started, 2)
        report["files"] = {"dir": str(out_dir), "model": str(final_path), "report_json": str(out_dir / "report.json"),
                           "report_md": str(out_dir / "report.md"), "plot": str(out_dir / "report.png")}
        reporting.write(report, out_dir)
        if not quiet:
            reporting.print_table(report)
        return report


def split_digest(splits: Splits) -> dict:
    return {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test),
            "num_classes": splits.num_classes, "input_shape": list(splits.input_shape),
            "fingerprint": splits.fingerprint, "test_class_counts": np.bincount(splits.test.y).tolist()}
