"""``quantize``: onnxruntime post-training quantization of an exported ONNX model (docs/quantization.md):
``int8_static``, ``int8_dynamic``, ``int4_weight_only`` (MatMulNBits), ``mixed`` (INT4 for the large linear
layers, INT8 elsewhere) and ``auto`` (every mode and fp32 measured; the fastest within the budget ships). With an
accuracy budget the most sensitive layers stay fp32 until the validation drop holds
(``compress.quantization.search``); when nothing meets it, the best file found is kept and the report says so.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import onnx
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from compress._io import atomic_path
from compress._onnx import convert_to_ort, set_metadata
from compress._progress import say
from compress.artifact import Artifact
from compress.bench import cpu_info, time_interleaved
from compress.errors import StageError
from compress.quantization import backend
from compress.quantization.backend import INT4_LEVELS, gemm_to_matmul, matmul_name
from compress.quantization.search import CANDIDATE_COLUMNS, Candidate, ValScorer, accuracy_aware, candidate_rows, choose
from compress.runtimes.onnxruntime import load
from compress.stages.base import StageConfig, register_stage
from compress.stages.export import SUFFIX, file_metadata, write_runtime_file

__all__ = ["QuantizeConfig", "CalibrationConfig", "quantize", "gemm_to_matmul", "DEFAULT_BUDGET", "INT4_LEVELS"]

DEFAULT_BUDGET = 0.01  # auto, mixed and accuracy_level auto without max_accuracy_drop: one accuracy point
_NO_LINEAR = "quantize: int4_weight_only found no linear layer (MatMul/Gemm with constant weights) to quantize"


class CalibrationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    samples: int = Field(256, ge=1, le=1_000_000, description="training samples streamed through the model (a cap)")
    batch_size: int = Field(32, ge=1, le=4096)


class QuantizeConfig(StageConfig):
    type: Literal["quantize"]
    mode: Literal["int8_static", "int8_dynamic", "int4_weight_only", "mixed", "auto"] = "int8_static"
    calibration: CalibrationConfig = CalibrationConfig()
    per_channel: bool = Field(True, description="one scale per output channel of each weight")
    activations: Literal["uint8", "int8"] = Field("uint8", description="int8_static: activation type (U8S8 is fastest on x86)")
    format: Literal["qdq", "qoperator"] = Field("qdq", description="int8_static: QDQ nodes or fused QLinear operators")
    reduce_range: Literal["auto", True, False] = Field(
        "auto", description="7-bit weights; auto = on when the CPU lacks VNNI, where u8s8 int16 accumulation saturates")
    block_size: Literal[16, 32, 64, 128, 256] = Field(32, description="int4_weight_only: weights per quantization block")
    accuracy_level: Literal[0, 1, 2, 3, 4, "auto"] | None = Field(
        None, description="int4_weight_only, mixed: MatMulNBits compute type; 4 = INT8 compute (fastest on most CPUs), "
                          "0 = default; auto (int4_weight_only) = the fastest of 0, 1, 2, 4 within the accuracy budget")
    max_accuracy_drop: float | None = Field(
        None, ge=0, le=1, description="validation accuracy the file may lose against its fp32 source, as a fraction "
                                      "(0.005 = half a point); the most sensitive layers stay fp32 until it holds; "
                                      "auto, mixed and accuracy_level auto default to 0.01")
    int4_min_weights: int = Field(16384, ge=1, description="mixed: linear layers with at least this many weights "
                                                           "are INT4 candidates")

    @field_validator("accuracy_level")
    @classmethod
    def _level_auto_is_int4(cls, v, info: ValidationInfo):
        mode = info.data.get("mode")
        if v == "auto" and mode != "int4_weight_only":
            raise ValueError(f"accuracy_level 'auto' is for mode int4_weight_only (mode auto tries every level itself); "
                             f"with mode {mode} use 0, 1, 2, 3 or 4")
        return v

    @field_validator("format")
    @classmethod
    def _mixed_is_qdq(cls, v, info: ValidationInfo):
        if v != "qdq" and info.data.get("mode") == "mixed":
            raise ValueError("mode mixed writes QDQ INT8 beside MatMulNBits; use format: qdq")
        return v

    @property
    def budget(self) -> float | None:
        """The accuracy budget, with the default of the modes that always search."""
        if self.max_accuracy_drop is not None:
            return self.max_accuracy_drop
        if self.mode in ("auto", "mixed") or self.accuracy_level == "auto":
            return DEFAULT_BUDGET
        return None


def _static(src: Path, workdir: Path, cfg: QuantizeConfig, ctx, cache_ranges: bool = True) -> backend.Int8Static:
    return backend.Int8Static(src, workdir, ctx.splits.train.x, cfg.calibration, per_channel=cfg.per_channel,
                              activations=cfg.activations, reduce_range=backend.reduce_range(cfg.reduce_range),
                              seed=ctx.recipe.seed, cache_ranges=cache_ranges)


def _static_info(st: backend.Int8Static, cfg: QuantizeConfig, fmt: str | None = None) -> dict:
    return dict(calibration=cfg.calibration.method, calibration_samples=st.samples, calibration_split="train",
                per_channel=cfg.per_channel, format=fmt or cfg.format, activations=cfg.activations,
                reduce_range=st.reduce_range)


def _linear(layers):
    return [layer for layer in layers if layer.linear]


# --- one function per mode: without an accuracy budget (``scorer`` and ``budget`` None) one file, exactly as the
# options say; with one, the most sensitive layers stay fp32 ------------------------------------------------------


def _int8_aware(st: backend.Int8Static, scorer, budget, wd, fmt: str = "qdq") -> tuple[Path, dict]:
    """Static INT8 with the most sensitive layers kept fp32 until the drop is within ``budget``."""
    return accuracy_aware(st.layers, lambda layer, p: st.write(p, only=[layer.name], fmt=fmt),
                          lambda ex, p: st.write(p, exclude=ex, fmt=fmt), scorer, budget, wd, "int8", "INT8")


def _int8_static(art, cfg, ctx, wd, scorer, budget) -> tuple[Path, dict]:
    st = _static(art.path, wd, cfg, ctx, cache_ranges=budget is not None)
    if budget is None:
        return st.write(wd / "int8.onnx", fmt=cfg.format), _static_info(st, cfg)
    path, info = _int8_aware(st, scorer, budget, wd, cfg.format)
    info.update(_static_info(st, cfg))
    return path, info


def _int8_dynamic(art, cfg, ctx, wd, scorer, budget) -> tuple[Path, dict]:
    if budget is None:
        path = backend.int8_dynamic(art.path, wd / "dyn.onnx", per_channel=cfg.per_channel)
        return path, {"per_channel": cfg.per_channel}
    # quantize_dynamic rewrites Gemm as MatMul + Add under new names; rewritten first, the names hold
    src = wd / "dyn_src.onnx"
    onnx.save(gemm_to_matmul(onnx.load(str(art.path))), str(src))
    layers = backend.weighted_layers(src)
    path, info = accuracy_aware(
        layers, lambda layer, p: backend.int8_dynamic(src, p, per_channel=cfg.per_channel, only=[layer.name]),
        lambda ex, p: backend.int8_dynamic(src, p, per_channel=cfg.per_channel, exclude=ex),
        scorer, budget, wd, "dyn", "dynamic INT8")
    info.update(per_channel=cfg.per_channel)
    return path, info


def _int4(art, cfg, ctx, wd, scorer, budget) -> tuple[Path, dict]:
    if budget is None:
        path = wd / "int4.onnx"
        n = backend.int4(art.path, path, block_size=cfg.block_size, accuracy_level=cfg.accuracy_level)
        if n == 0:
            raise StageError(_NO_LINEAR)
        return path, dict(block_size=cfg.block_size, accuracy_level=cfg.accuracy_level, matmulnbits_nodes=n)
    layers = _linear(backend.weighted_layers(art.path))
    if not layers:
        raise StageError(_NO_LINEAR)
    if cfg.accuracy_level == "auto":
        return _int4_levels(art, cfg, ctx, wd, scorer, budget, layers)

    def int4(names, p):  # MatMulNBits for the linear layers named
        backend.int4(art.path, p, block_size=cfg.block_size, accuracy_level=cfg.accuracy_level,
                     include=[matmul_name(x) for x in layers if x.name in names])
        return p

    path, info = accuracy_aware(layers, lambda layer, p: int4({layer.name}, p),
                                lambda ex, p: int4({x.name for x in layers} - set(ex), p),
                                scorer, budget, wd, "int4", "INT4")
    info.update(block_size=cfg.block_size, accuracy_level=cfg.accuracy_level,
                matmulnbits_nodes=len(layers) - len(info["fp32_layers"]))
    return path, info


def _timed_choice(cands: list[Candidate], ctx, scorer: ValScorer, budget: float,
                  title: str) -> tuple[Candidate, bool, dict]:
    """``choose`` among the candidates, each scored, then timed at batch 1 on one thread in the same interleaved
    rounds after warm-up; with their table (speeds against the first)."""
    for c in cands:
        if c.path is not None:
            c.score = scorer(c.path)
    x1, bench = ctx.splits.val.x[:1], ctx.recipe.bench
    runners = {c.name: load(c.path, threads=1).timer(x1) for c in cands if c.path is not None}
    timings = time_interleaved(runners, rounds=bench.rounds, calls=bench.calls, seed=ctx.recipe.seed)
    for c in cands:
        if c.name in timings:
            c.timing = timings[c.name].as_dict()
            c.size_bytes = Path(c.path).stat().st_size
    winner, met = choose(cands, budget)
    return winner, met, {"title": title, "columns": CANDIDATE_COLUMNS, "rows": candidate_rows(cands, cands[0])}


def _int4_candidates(src, cfg: QuantizeConfig, wd: Path, name: str) -> list[Candidate]:
    """One MatMulNBits file per compute type of INT4_LEVELS, each a candidate named ``<name> <level>``."""
    for level in INT4_LEVELS:
        backend.int4(src, wd / f"int4_level{level}.onnx", block_size=cfg.block_size, accuracy_level=level)
    return [Candidate(f"{name} {level}", wd / f"int4_level{level}.onnx") for level in INT4_LEVELS]


def _cpu_note() -> str:
    c = cpu_info()
    return (f"Timed on {c['model']} ({c['machine']}, {c['cores']} cores, features: {', '.join(c['features']) or 'none'}); "
            "batch 1, one thread, onnxruntime, all candidates in the same interleaved rounds after warm-up.")


def _int4_levels(art, cfg, ctx, wd, scorer, budget, layers) -> tuple[Path, dict]:
    cands = [Candidate("fp32 (source, reference)", Path(art.path), eligible=False),
             *_int4_candidates(art.path, cfg, wd, "INT4 accuracy_level")]
    winner, met, table = _timed_choice(cands, ctx, scorer, budget,
                                       f"INT4 accuracy levels (block size {cfg.block_size})")
    level = int(winner.name.rsplit(" ", 1)[1])
    info = {"block_size": cfg.block_size, "accuracy_level": level, "accuracy_level_choice": "auto",
            "matmulnbits_nodes": len(layers), "budget_met": met, "val_accuracy": winner.score.accuracy,
            "val_drop": winner.score.drop,
            "notes": [f"accuracy_level auto: level {level} is the fastest within the budget of {budget:.2%}" if met else
                      f"No accuracy_level met the budget of {budget:.2%}; kept the most accurate, level {level}.",
                      _cpu_note()],
            "tables": [table]}
    return winner.path, info


def _mixed_build(st: backend.Int8Static, cfg: QuantizeConfig, plan: dict[str, str], layers, wd: Path, dst: Path) -> Path:
    """INT8 QDQ for the plan's int8 layers, MatMulNBits for its int4 layers, fp32 for the rest: one file."""
    excl = [n for n, p in plan.items() if p != "int8"]
    mid = st.write(wd / (dst.stem + "_int8.onnx"), exclude=excl)
    by_name = {layer.name: layer for layer in layers}
    backend.int4(mid, dst, block_size=cfg.block_size, accuracy_level=cfg.accuracy_level,
                 include=[matmul_name(by_name[n]) for n, p in plan.items() if p == "int4"])
    return dst


def _mixed(art, cfg, ctx, wd, scorer, budget) -> tuple[Path, dict]:
    st = _static(art.path, wd, cfg, ctx)
    layers = st.layers
    p8, info = _int8_aware(st, scorer, budget, wd)  # INT8 first, as int8_static with max_accuracy_drop
    plan = {layer.name: "fp32" if layer.name in info["fp32_layers"] else "int8" for layer in layers}
    big = [layer for layer in _linear(layers) if layer.weights >= cfg.int4_min_weights and plan[layer.name] == "int8"]
    info.update(_static_info(st, cfg), block_size=cfg.block_size, accuracy_level=cfg.accuracy_level,
                int4_min_weights=cfg.int4_min_weights)
    path, score = p8, scorer(p8)
    if not big:
        info["notes"].append(f"No INT8 linear layer has {cfg.int4_min_weights:,} weights or more (int4_min_weights): "
                             "no INT4 candidate, the file is INT8 only.")
    else:
        sens4 = {}
        for i, layer in enumerate(big):
            p = wd / f"sens_int4_{i}.onnx"
            backend.int4(st.pre, p, block_size=cfg.block_size, accuracy_level=cfg.accuracy_level,
                         include=[matmul_name(layer)])
            sens4[layer.name] = scorer(p)
        rows = []
        for i, layer in enumerate(sorted(big, key=lambda la: (sens4[la.name].drop, sens4[la.name].logit_error))):
            trial = {**plan, layer.name: "int4"}
            p = _mixed_build(st, cfg, trial, layers, wd, wd / f"mixed_{i}.onnx")
            s = scorer(p)
            ok = s.within(budget)
            if ok:
                plan, path, score = trial, p, s
            rows.append([layer.name, f"{layer.weights:,}", f"{sens4[layer.name].drop:+.2%}",
                         f"{sens4[layer.name].logit_error:.2e}", f"{s.accuracy:.2%}", f"{s.drop:+.2%}",
                         "INT4" if ok else "stays INT8 (budget)"])
        info["tables"].append({"title": "INT4 candidates (large linear layers, least sensitive first)",
                               "columns": ["layer", "weights", "val acc drop (INT4 alone)", "logit error",
                                           "val acc with it INT4", "drop", "decision"], "rows": rows})
    n4 = sum(p == "int4" for p in plan.values())
    n8 = sum(p == "int8" for p in plan.values())
    info["notes"].append(f"Mixed precision: {n4} layer(s) INT4 (MatMulNBits), {n8} INT8, {len(layers) - n4 - n8} fp32; "
                         f"validation drop {score.drop:+.2%} (budget {budget:.2%}).")
    info.update(plan=plan, matmulnbits_nodes=n4, budget_met=score.within(budget), val_accuracy=score.accuracy,
                val_drop=score.drop)
    return path, info


def _auto(art, cfg, ctx, wd, scorer, budget) -> tuple[Path, dict]:
    src = Path(art.path)
    st = _static(src, wd, cfg, ctx)
    fp32 = Candidate("fp32 (source)", src)
    cands = [fp32]
    for fmt in ("qdq", "qoperator"):
        cands.append(Candidate(f"INT8 static {fmt.upper()}", st.write(wd / f"auto_int8_{fmt}.onnx", fmt=fmt)))
    extra: dict = {"notes": [], "tables": []}
    if not scorer(cands[1].path).within(budget):
        path, extra = _int8_aware(st, scorer, budget, wd)
        cands.append(Candidate(f"INT8 static QDQ, {len(extra['fp32_layers'])} layer(s) fp32", path))
    cands.append(Candidate("INT8 dynamic", backend.int8_dynamic(src, wd / "auto_dyn.onnx", per_channel=cfg.per_channel)))
    if _linear(backend.weighted_layers(src)):
        cands += _int4_candidates(src, cfg, wd, "INT4 weight-only, accuracy_level")
    else:
        cands.append(Candidate("INT4 weight-only", None, error="no linear layer (MatMul/Gemm with constant weights)"))
    winner, met, table = _timed_choice(cands, ctx, scorer, budget, "Candidates (validation accuracy, latency)")
    info = {"winner": winner.name, "budget": budget, "budget_met": met, "val_accuracy": winner.score.accuracy,
            "val_drop": winner.score.drop, "cpu": cpu_info(), **_static_info(st, cfg, fmt="qdq")}
    spd = fp32.timing["p50"] / winner.timing["p50"]
    notes = [f"auto: {winner.name} ships, the fastest candidate within the accuracy budget of {budget:.2%} "
             f"(validation drop {winner.score.drop:+.2%}, {spd:.2f}x the fp32 source's p50)" if met else
             f"auto: no candidate met the budget of {budget:.2%}; kept the most accurate, {winner.name}.",
             _cpu_note(), "Timings within 3 % of the fastest count as a tie, won by the more accurate (then smaller) file."]
    info["notes"] = notes + extra["notes"]
    info["tables"] = [table] + extra["tables"]
    info["candidates"] = [{"name": c.name, "val_accuracy": c.score.accuracy if c.score else None,
                           "val_drop": c.score.drop if c.score else None, "latency_ms": c.timing,
                           "size_bytes": c.size_bytes, "verdict": c.verdict} for c in cands]
    return winner.path, info


def _not_quantized_yet(path) -> None:
    """A file that already has quantized operators (from ``qat`` or an earlier quantize) is refused."""
    done = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulNBits", "QLinearConv", "QGemm",
            "QLinearMatMul", "ConvInteger", "MatMulInteger"}
    found = sorted({n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node} & done)
    if found:
        raise StageError(f"quantize: {path} is already quantized ({', '.join(found)} nodes; a qat stage writes such a "
                         "file); quantize takes an fp32 model: drop this stage, or put it after an export of an fp32 model")


MODES = {"int8_static": _int8_static, "int8_dynamic": _int8_dynamic, "int4_weight_only": _int4, "mixed": _mixed,
         "auto": _auto}


@register_stage(QuantizeConfig, accepts={"onnx"}, produces="onnx")
def quantize(art: Artifact, cfg: QuantizeConfig, ctx) -> Artifact:
    _not_quantized_yet(art.path)
    dst = ctx.stage_path(f"quantize_{cfg.mode}", ".onnx")
    info: dict = {"mode": cfg.mode}
    budget = cfg.budget
    # onnxruntime's calibrators print progress to stdout; the report carries what matters.
    with tempfile.TemporaryDirectory(prefix="compress-quantize-") as wd, atomic_path(dst) as tmp, \
            contextlib.redirect_stdout(io.StringIO()):
        scorer = None if budget is None else ValScorer(art.path, ctx.splits.val.x, ctx.splits.val.y)
        path, found = MODES[cfg.mode](art, cfg, ctx, Path(wd), scorer, budget)
        shutil.copyfile(path, tmp)
        info.update(found)
        if scorer is not None:
            final = scorer(tmp)  # re-measured on the file that ships
            info.update(max_accuracy_drop=budget, source_val_accuracy=scorer.ref_accuracy,
                        val_accuracy=final.accuracy, val_drop=final.drop, budget_met=final.within(budget),
                        quantized_files_scored=scorer.calls)
    if info.get("budget_met") is False:
        say(f"[yellow]warning: quantize ({cfg.mode}): no file met max_accuracy_drop {budget:.2%} on validation; kept the "
            f"best one found (drop {info['val_drop']:.2%}), see the report's quantize section[/yellow]", ctx.quiet)
    set_metadata(dst, file_metadata(ctx))  # before the .ort conversion, which keeps them
    formats = art.info.get("formats") or []
    if "ort" in formats:
        info["ort_path"] = str(convert_to_ort(dst, dst.with_suffix(".ort")))
    info["formats"] = formats
    files = _runtime_files(art, cfg, ctx, dst, info)
    if files:
        info["files"] = files
    return art.derive("quantize", path=dst, info=info)


def _runtime_files(art: Artifact, cfg: QuantizeConfig, ctx, dst: Path, info: dict) -> dict:
    """8-bit ExecuTorch / LiteRT files beside the quantized ONNX file (``int8_static`` only).

    pt2e quantizes the torch module (kept on the artifact by ``export``), calibrated on exactly the
    training samples the ONNX path used. Other modes have no counterpart there: the fp32 files carry on.
    """
    prev = {k: v for k, v in (art.info.get("files") or {}).items() if k in ("executorch", "litert")}
    if not prev:
        return {}
    files = {"ort": info["ort_path"]} if "ort_path" in info else {}
    if cfg.mode != "int8_static" or art.model is None:
        why = (f"mode {cfg.mode} has no ExecuTorch/LiteRT counterpart" if cfg.mode != "int8_static"
               else "the torch model is not available (export output restored from the cache)")
        info["runtime_files_note"] = f"{', '.join(prev)} files stay fp32: {why}"
        return {**files, **prev}
    x = ctx.splits.train.x
    calib = x[backend.Reader(x, "", cfg.calibration.samples, cfg.calibration.batch_size, ctx.recipe.seed).rows]
    for fmt in prev:
        out = dst.with_suffix(SUFFIX[fmt])
        write_runtime_file(fmt, art.model, ctx.splits.input_shape, out, art.info.get("static_batch", 1), calibration=calib)
        files[fmt] = str(out)
    info["runtime_calibration_samples"] = int(len(calib))
    if info.get("fp32_layers"):
        info["runtime_files_note"] = (f"{', '.join(prev)} files quantize every layer (pt2e); the layers kept fp32 "
                                      "by max_accuracy_drop are kept so in the ONNX file only")
    return files
