"""Small ONNX graphs built by hand for the runtime, bench and check tests (no training, no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def matmul_chain(path: Path, dim: int = 64, layers: int = 2, heavy: int = 0, heavy_dim: int = 256, seed: int = 0) -> Path:
    """input (batch, 1, 8, 8) -> flatten -> ``layers`` x (MatMul dim x dim, Relu) -> MatMul to 10 logits.

    ``heavy`` adds that many MatMuls of ``heavy_dim`` x ``heavy_dim`` on a side branch whose result is
    added back times zero: the logits are unchanged, the work is not (onnxruntime cannot fold it
    away because it depends on the input). That is the deliberately slowed model of the gate tests.
    """
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name))
        return name

    nodes.append(helper.make_node("Flatten", ["input"], ["x0"], axis=1))
    cur, width = "x0", 64
    if dim != 64:
        nodes.append(helper.make_node("MatMul", [cur, const("w_in", rng.normal(0, 0.1, (64, dim)))], ["xin"]))
        cur, width = "xin", dim
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [cur, const(f"w{i}", rng.normal(0, 0.1, (width, width)))], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"]))
        cur = f"r{i}"
    w_out = const("w_out", rng.normal(0, 0.1, (width, 10)))  # drawn before the heavy branch: same logits with it
    if heavy:
        nodes.append(helper.make_node("MatMul", ["x0", const("h_in", rng.normal(0, 0.1, (64, heavy_dim)))], ["h0"]))
        h = "h0"
        for i in range(heavy):
            nodes.append(helper.make_node("MatMul", [h, const(f"h{i}w", rng.normal(0, 0.05, (heavy_dim, heavy_dim)))],
                                          [f"h{i + 1}"]))
            h = f"h{i + 1}"
        nodes.append(helper.make_node("ReduceSum", [h], ["hs"], keepdims=1))
        nodes.append(helper.make_node("Mul", ["hs", const("zero", np.zeros((1,)))], ["hz"]))
        nodes.append(helper.make_node("Add", [cur, "hz"], ["with_heavy"]))
        cur = "with_heavy"
    nodes.append(helper.make_node("MatMul", [cur, w_out], ["logits"]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)
