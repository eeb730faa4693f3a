"""``quantize``: onnxruntime post-training quantization of an exported ONNX model.

Modes: ``int8_static`` (QDQ, per-channel weights, activations calibrated on training samples),
``int8_dynamic`` (weights INT8, activations quantized per call), ``int4_weight_only``
(MatMulNBits for the linear layers; everything else stays fp32).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper
from pydantic import BaseModel, ConfigDict, Field

from compress._io import atomic_path
from compress.artifact import Artifact
from compress.errors import StageError
from compress.stages.base import StageConfig, register_stage

__all__ = ["QuantizeConfig", "CalibrationConfig", "quantize", "gemm_to_matmul"]


class CalibrationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    samples: int = Field(256, ge=1, le=1_000_000, description="training samples streamed through the model (a cap)")
    batch_size: int = Field(32, ge=1, le=4096)


class QuantizeConfig(StageConfig):
    type: Literal["quantize"]
    mode: Literal["int8_static", "int8_dynamic", "int4_weight_only"] = "int8_static"
    calibration: CalibrationConfig = CalibrationConfig()
    per_channel: bool = Field(True, description="one scale per output channel of each weight")
    activations: Literal["uint8", "int8"] = Field("uint8", description="int8_static: activation type (U8S8 is fastest on x86)")
    format: Literal["qdq", "qoperator"] = Field("qdq", description="int8_static: QDQ nodes or fused QLinear operators")
    reduce_range: Literal["auto", True, False] = Field(
        "auto", description="7-bit weights; auto = on when the CPU lacks VNNI, where u8s8 int16 accumulation saturates")
    block_size: Literal[16, 32, 64, 128, 256] = Field(32, description="int4_weight_only: weights per quantization block")
    accuracy_level: Literal[0, 1, 2, 3, 4] | None = Field(
        None, description="int4_weight_only: MatMulNBits compute type; 4 = INT8 compute (fastest on most CPUs), 0 = default")


class _Reader:
    """Streams calibration batches from the training split, capped at ``samples`` (memory stays flat)."""

    def __init__(self, x: np.ndarray, input_name: str, samples: int, batch_size: int, seed: int):
        idx = np.random.default_rng(seed).permutation(len(x))[:samples]
        if len(idx) > batch_size:  # histogram calibrators (entropy, percentile) need equal batch sizes
            idx = idx[:len(idx) // batch_size * batch_size]
        self.samples = len(idx)
        self._x, self._idx, self._name, self._bs, self._pos = x, np.sort(idx), input_name, batch_size, 0

    def get_next(self):
        if self._pos >= len(self._idx):
            return None
        batch = self._idx[self._pos:self._pos + self._bs]
        self._pos += self._bs
        return {self._name: np.ascontiguousarray(self._x[batch])}

    def rewind(self):
        self._pos = 0


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite Gemm(x, W, b) with constant W as MatMul(x, W') + b: MatMulNBits only replaces MatMul."""
    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            w = w.T
        w_name = node.input[1] + "_kn"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), w_name))
        if len(node.input) > 2 and node.input[2]:
            mid = node.output[0] + "_matmul"
            nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mid], name=node.name + "_MatMul"))
            nodes.append(helper.make_node("Add", [mid, node.input[2]], list(node.output), name=node.name + "_Add"))
        else:
            nodes.append(helper.make_node("MatMul", [node.input[0], w_name], list(node.output), name=node.name + "_MatMul"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model


def _int8_static(src: Path, dst: Path, cfg: QuantizeConfig, x_train: np.ndarray, seed: int) -> int:
    """Quantize with calibration on training samples; returns the number of samples used."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)  # shape inference + fusions, as ORT advises
        name = onnx.load(str(pre), load_external_data=False).graph.input[0].name
        reader = _Reader(x_train, name, cfg.calibration.samples, cfg.calibration.batch_size, seed)
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[cfg.calibration.method]
        quantize_static(str(pre), str(dst), reader,
                        quant_format=QuantFormat.QDQ if cfg.format == "qdq" else QuantFormat.QOperator,
                        per_channel=cfg.per_channel, calibrate_method=method,
                        activation_type=QuantType.QUInt8 if cfg.activations == "uint8" else QuantType.QInt8,
                        weight_type=QuantType.QInt8, reduce_range=reduce_range(cfg))
    return reader.samples


def reduce_range(cfg: QuantizeConfig) -> bool:
    """On x86 without VNNI, onnxruntime's u8s8 kernels add pairs of products in int16 (vpmaddubsw), which
    saturates with full-range 8-bit weights: measured on digits, per-channel INT8 lost 2.2 accuracy points
    with 8-bit weights and none with 7-bit ones. With VNNI (or on ARM) full range is safe."""
    if cfg.reduce_range != "auto":
        return bool(cfg.reduce_range)
    from compress.bench import cpu_info

    feats = set(cpu_info()["features"])
    return cpu_info()["machine"] in ("x86_64", "AMD64") and not feats & {"avx512_vnni", "avx_vnni"}


def _int8_dynamic(src: Path, dst: Path, cfg: QuantizeConfig) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=cfg.per_channel, weight_type=QuantType.QInt8)


def _int4(src: Path, dst: Path, cfg: QuantizeConfig) -> int:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = gemm_to_matmul(onnx.load(str(src)))
    q = MatMulNBitsQuantizer(model, bits=4, block_size=cfg.block_size, is_symmetric=True,
                             accuracy_level=cfg.accuracy_level)
    q.process()
    out = q.model.model
    onnx.save(out, str(dst))
    return sum(n.op_type == "MatMulNBits" for n in out.graph.node)


@register_stage(QuantizeConfig, accepts={"onnx"}, produces="onnx")
def quantize(art: Artifact, cfg: QuantizeConfig, ctx) -> Artifact:
    dst = ctx.stage_path(f"quantize_{cfg.mode}", ".onnx")
    info: dict = {"mode": cfg.mode}
    # onnxruntime's calibrators print progress to stdout; the report carries what matters.
    with atomic_path(dst) as tmp, contextlib.redirect_stdout(io.StringIO()):
        if cfg.mode == "int8_static":
            samples = _int8_static(art.path, tmp, cfg, ctx.splits.train.x, ctx.recipe.seed)
            info.update(calibration=cfg.calibration.method, calibration_samples=samples, calibration_split="train",
                        per_channel=cfg.per_channel, format=cfg.format, activations=cfg.activations,
                        reduce_range=reduce_range(cfg))
        elif cfg.mode == "int8_dynamic":
            _int8_dynamic(art.path, tmp, cfg)
            info.update(per_channel=cfg.per_channel)
        else:
            n = _int4(art.path, tmp, cfg)
            if n == 0:
                raise StageError("quantize: int4_weight_only found no linear layer (MatMul/Gemm with constant weights) to quantize")
            info.update(block_size=cfg.block_size, accuracy_level=cfg.accuracy_level, matmulnbits_nodes=n)
    formats = art.info.get("formats") or []
    if "ort" in formats:
        from compress._onnx import convert_to_ort
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
    from compress.stages.export import SUFFIX, write_runtime_file

    prev = {k: v for k, v in (art.info.get("files") or {}).items() if k in ("executorch", "litert")}
    if not prev:
        return {}
    files = {"ort": info["ort_path"]} if "ort_path" in info else {}
    if cfg.mode != "int8_static" or art.model is None:
        why = (f"mode {cfg.mode} has no ExecuTorch/LiteRT counterpart" if cfg.mode != "int8_static"
               else "the torch model is not available (export output restored from the cache)")
        info["runtime_files_note"] = f"{', '.join(prev)} files stay fp32: {why}"
        return {**files, **prev}
    reader = _Reader(ctx.splits.train.x, "", cfg.calibration.samples, cfg.calibration.batch_size, ctx.recipe.seed)
    calib = ctx.splits.train.x[reader._idx]
    for fmt in prev:
        out = dst.with_suffix(SUFFIX[fmt])
        write_runtime_file(fmt, art.model, ctx.splits.input_shape, out, art.info.get("static_batch", 1), calibration=calib)
        files[fmt] = str(out)
    info["runtime_calibration_samples"] = int(len(calib))
    return files
