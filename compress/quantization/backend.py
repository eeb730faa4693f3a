"""How: onnxruntime writes one quantized file per plan (which layer gets which precision).

A plan maps layer (node) names to ``"int8"``, ``"int4"`` or ``"fp32"``; layers left out of it take the
mode's default. Pre-processing and calibration happen once per source file, so the many files an
accuracy-aware search writes cost one quantization pass each, not one calibration each.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["INT4_LEVELS", "Layer", "weighted_layers", "gemm_to_matmul", "Int8Static", "int8_dynamic", "int4",
           "matmul_name", "reduce_range", "Reader", "drop_unused_initializers"]

# Operators with a constant weight: the layers a plan assigns precisions to. Pooling, activations and
# additions follow their neighbours (QDQ quantizes them wherever their inputs are quantized).
# MatMulNBits compute types on CPU: 0 default, 1 fp32, 2 fp16 (fp32 on x86), 4 INT8 (3, bf16, has no x86 kernel)
INT4_LEVELS = (0, 1, 2, 4)
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class Layer:
    name: str  # the ONNX node name (what onnxruntime's nodes_to_exclude takes)
    op: str
    weights: int  # number of weight values

    @property
    def linear(self) -> bool:
        return self.op in ("Gemm", "MatMul")


def weighted_layers(path: str | Path) -> list[Layer]:
    """Nodes of ``WEIGHTED_OPS`` whose weight (input 1) is an initializer, in graph order."""
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in inits:
            if not node.name:
                raise ValueError(f"a {node.op_type} node has no name; onnxruntime cannot exclude it by name")
            out.append(Layer(node.name, node.op_type, int(np.prod(inits[node.input[1]].dims))))
    return out


def matmul_name(layer: Layer) -> str:
    """The MatMul node that ``gemm_to_matmul`` makes of a linear layer (the name MatMulNBits replaces)."""
    return layer.name if layer.op == "MatMul" else layer.name + "_MatMul"


class Reader:
    """Streams calibration batches from the training split, capped at ``samples`` (memory stays flat)."""

    def __init__(self, x: np.ndarray, input_name: str, samples: int, batch_size: int, seed: int):
        idx = np.random.default_rng(seed).permutation(len(x))[:samples]
        if len(idx) > batch_size:  # histogram calibrators (entropy, percentile) need equal batch sizes
            idx = idx[:len(idx) // batch_size * batch_size]
        self.rows = np.sort(idx)  # the training rows calibrated on, in order
        self._x, self._name, self._bs = x, input_name, batch_size
        self.rewind()

    def get_next(self):
        return next(self._batches, None)

    def rewind(self):
        self._batches = ({self._name: np.ascontiguousarray(self._x[self.rows[i:i + self._bs]])}
                         for i in range(0, len(self.rows), self._bs))


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
        bias = len(node.input) > 2 and node.input[2]
        out = [node.output[0] + "_matmul"] if bias else list(node.output)
        nodes.append(helper.make_node("MatMul", [node.input[0], w_name], out, name=node.name + "_MatMul"))
        if bias:
            nodes.append(helper.make_node("Add", [out[0], node.input[2]], list(node.output), name=node.name + "_Add"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return drop_unused_initializers(model)


def drop_unused_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """In place: remove the initializers no node reads any more (a rewritten weight's original)."""
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model


def reduce_range(setting) -> bool:
    """On x86 without VNNI, onnxruntime's u8s8 kernels add pairs of products in int16 (vpmaddubsw), which
    saturates with full-range 8-bit weights: measured on digits, per-channel INT8 lost 2.2 accuracy points
    with 8-bit weights and none with 7-bit ones. With VNNI (or on ARM) full range is safe."""
    if setting != "auto":
        return bool(setting)
    from compress.bench import cpu_info

    info = cpu_info()
    return info["machine"] in ("x86_64", "AMD64") and not set(info["features"]) & {"avx512_vnni", "avx_vnni"}


class Int8Static:
    """onnxruntime static INT8 of one source file: pre-processed once, calibrated once (when onnxruntime
    can cache calibration ranges, >= 1.22), then one ``write`` per plan.

    ``calibration`` is a ``CalibrationConfig``; ``workdir`` holds the pre-processed file and the ranges.
    """

    def __init__(self, src: Path, workdir: Path, x_train: np.ndarray, calibration, *, per_channel: bool,
                 activations: str, reduce_range: bool, seed: int, cache_ranges: bool = True):
        from onnxruntime.quantization import quant_pre_process, quantize_static

        self.pre = Path(workdir) / "pre.onnx"
        quant_pre_process(str(src), str(self.pre), skip_symbolic_shape=True)  # shape inference + fusions, as ORT advises
        name = onnx.load(str(self.pre), load_external_data=False).graph.input[0].name
        self.reader = Reader(x_train, name, calibration.samples, calibration.batch_size, seed)
        self.samples = len(self.reader.rows)
        self.method, self.per_channel, self.activations, self.reduce_range = (
            calibration.method, per_channel, activations, reduce_range)
        can_cache = "calibration_cache_path" in inspect.signature(quantize_static).parameters
        self._ranges = Path(workdir) / "ranges.json" if cache_ranges and can_cache else None

    @property
    def layers(self) -> list[Layer]:
        """The weighted layers of the pre-processed file (what a plan names)."""
        return weighted_layers(self.pre)

    def write(self, dst: Path, *, exclude=(), only: list[str] | None = None, fmt: str = "qdq") -> Path:
        """Quantize every layer except ``exclude`` (or, with ``only``, just those nodes) into ``dst``."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        self.reader.rewind()
        method = {m.name.lower(): m for m in CalibrationMethod}[self.method]  # minmax, entropy, percentile
        extra = {"calibration_cache_path": str(self._ranges)} if self._ranges is not None else {}
        if exclude or only is not None:
            # The quantizer drops a Relu/Clip after a quantized layer (the QuantizeLinear's range clips instead),
            # and onnxruntime's graph optimizer then removes a Q/DQ pair that feeds an fp32 layer, clip and all:
            # measured, an fp32 layer after an INT8 one read un-ReLU'd values (val accuracy 96 % -> 5 %).
            extra["extra_options"] = {"QDQKeepRemovableActivations": True}
        quantize_static(str(self.pre), str(dst), self.reader,
                        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                        per_channel=self.per_channel, calibrate_method=method,
                        activation_type=QuantType.QUInt8 if self.activations == "uint8" else QuantType.QInt8,
                        weight_type=QuantType.QInt8, reduce_range=self.reduce_range, nodes_to_exclude=list(exclude),
                        nodes_to_quantize=list(only or ()), **extra)  # (empty: no node excluded / all quantized)
        if (exclude or only is not None) and fmt == "qdq":
            model = onnx.load(str(dst))
            if keep_fp32_inputs(model):
                onnx.save(model, str(dst))
        return Path(dst)


def keep_fp32_inputs(model: onnx.ModelProto) -> int:
    """Make every fp32 weighted layer read its input before the Q/DQ pair, not after it; returns how many.

    onnxruntime's graph optimizer (WeightBiasQuantization, level basic and up) gives a Conv/Gemm whose
    input comes from a DequantizeLinear symmetric per-tensor INT8 weights at load time, so a layer left
    out of the QDQ quantization would still run INT8 (measured: a layer kept fp32 for its outlier weights
    lost 91 accuracy points). Reading the float tensor keeps the layer fp32 for every session.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    changed = 0
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2 or node.input[1] not in inits:
            continue  # INT8 layers read their weight through a DequantizeLinear
        dq = producer.get(node.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            node.input[0] = q.input[0]
            changed += 1
    if changed:  # drop Q/DQ pairs nobody reads any more
        outputs = {o.name for o in model.graph.output}
        while True:
            used = {i for n in model.graph.node for i in n.input} | outputs
            dead = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                    and not any(o in used for o in n.output)]
            if not dead:
                break
            for n in dead:
                model.graph.node.remove(n)
    return changed


def int8_dynamic(src: Path, dst: Path, *, per_channel: bool, exclude=(), only: list[str] | None = None) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # "consider pre-processing": dynamic INT8 is timed as is, like the plain mode
    try:
        quantize_dynamic(str(src), str(dst), per_channel=per_channel, weight_type=QuantType.QInt8,
                         nodes_to_exclude=list(exclude), nodes_to_quantize=list(only or ()))
    finally:
        logging.disable(logging.NOTSET)
    return Path(dst)


def int4(src: Path, dst: Path, *, block_size: int, accuracy_level: int | None,
         include: list[str] | None = None) -> int:
    """MatMulNBits for the linear layers (those named by ``include``, as ``matmul_name`` gives, or all); returns
    how many MatMulNBits nodes it wrote."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = gemm_to_matmul(onnx.load(str(src)))
    if include is not None and not include:  # MatMulNBitsQuantizer reads an empty include list as "all"
        onnx.save(model, str(dst))
        return 0
    # its nodes_to_include adds to the op types it quantizes anyway: exclude the MatMuls not included
    excluded = [n.name for n in model.graph.node
                if n.op_type == "MatMul" and include is not None and n.name not in include]
    q = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level,
                             nodes_to_exclude=excluded)
    log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = log.level
    log.setLevel(logging.WARNING)  # one INFO line per node otherwise, for every file a search writes
    try:
        q.process()
    finally:
        log.setLevel(level)
    out = q.model.model
    onnx.save(out, str(dst))
    return sum(n.op_type == "MatMulNBits" for n in out.graph.node)
