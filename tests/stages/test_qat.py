"""Quantization-aware training: fake quantization by hand, BN folding, the QDQ export against torch, the chain."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from compress.artifact import Artifact
from compress.errors import ChainError, StageError
from compress.models import zoo
from compress.recipe import parse_recipe
from compress.quantization.backend import reduce_range
from compress.stages.qat import QatConfig, _ActQuant, _weight_fq, fold_batchnorm, observe, prepare_qat, qat, to_qdq
from tests.conftest import MINIMAL_RECIPE


def run(path, x, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL, optimized=None):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    if optimized:
        so.optimized_model_filepath = str(optimized)
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: np.ascontiguousarray(x)})[0]


@pytest.fixture(scope="module")
def student(splits, train):
    """cnn(width=16, depth=2): Conv+BN+ReLU twice, a Linear classifier; trained a few epochs."""
    torch.manual_seed(0)
    return train(zoo.cnn((1, 8, 8), 10, width=16, depth=2), splits)


def test_weight_fake_quant_by_hand():
    w = torch.tensor([[0.5, -1.0, 0.26], [0.0, 0.0, 0.0]], requires_grad=True)
    got = _weight_fq(w, 127)
    # row 0: scale 1/127; 0.5*127 = 63.5 -> 64 (half to even), -127, 0.26*127 = 33.02 -> 33; row 1 stays 0
    np.testing.assert_allclose(got.detach().numpy(), [[64 / 127, -1.0, 33 / 127], [0, 0, 0]], rtol=1e-6)
    got.sum().backward()  # straight-through: the gradient passes unchanged
    np.testing.assert_array_equal(w.grad.numpy(), np.ones((2, 3)))
    np.testing.assert_allclose(_weight_fq(torch.tensor([[0.25, -1.0]]), 63).numpy(), [[16 / 63, -1.0]], rtol=1e-6)  # 15.75 -> 16


def test_activation_ranges_by_hand():
    aq = _ActQuant(momentum=0.5).train()
    aq(torch.tensor([-1.0, 3.0]))  # first batch sets the range
    aq(torch.tensor([-1.0, 5.0]))  # then a moving average: lo = -1, hi = 4
    assert (float(aq.lo), float(aq.hi)) == (-1.0, 4.0)
    scale, zp = aq.qparams()
    assert float(scale) == pytest.approx(5 / 255, rel=1e-6) and int(zp) == 51  # 1 / (1/51)
    aq.eval()
    out = aq(torch.tensor([0.0, 1.0, 5.0]))
    assert float(aq.hi) == 4.0  # frozen in eval
    np.testing.assert_allclose(out.numpy(), [0.0, 1.0, 4.0], rtol=1e-6)  # 5 clips at (255 - 51) / 51


def test_fold_batchnorm_keeps_outputs(student, splits):
    folded = fold_batchnorm(student)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.from_numpy(splits.val.x[:64])
    with torch.no_grad():
        np.testing.assert_allclose(folded(x).numpy(), student.eval()(x).numpy(), atol=1e-4)


def test_qdq_export_matches_torch_fake_quant(student, splits, tmp_path):
    model = prepare_qat(student, qmax=63)
    observe(model, splits.train.x, 256, seed=0)
    path = tmp_path / "qat.onnx"
    assert to_qdq(model, splits.input_shape, path) == {"int8_weight_tensors": 3}
    graph = onnx.load(str(path)).graph
    kinds = [n.op_type for n in graph.node]
    assert kinds.count("QuantizeLinear") == 6  # input and output of 2 convs and the linear layer
    assert kinds.count("DequantizeLinear") == 6 + 3  # and the three weights
    int8 = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    assert len(int8) == 3 and all(np.abs(onnx.numpy_helper.to_array(i)).max() <= 63 for i in int8)  # 7-bit
    assert not [i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and np.prod(i.dims) > 100]
    x = np.ascontiguousarray(splits.val.x)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    exact = run(path, x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)  # the reference QDQ semantics
    # the same numbers, except where fp32 summation order tips a value over a rounding boundary: one step
    step = float(model.classifier.act_out.qparams()[0])
    close = np.abs(exact - ref) <= 1e-4 * np.abs(ref).max()
    assert close.mean() >= 0.99 and np.abs(exact - ref).max() <= 1.01 * step
    got = run(path, x, optimized=tmp_path / "opt.onnx")  # INT8 kernels: integer rounding may differ by a step
    assert np.abs(got - ref).max() <= 0.02 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.99
    optimized = {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    assert {"QLinearConv", "QGemm"} <= optimized  # onnxruntime runs it as INT8


def test_qat_stage(student, trained_cnn, as_artifact, make_ctx, splits):
    ctx = make_ctx(teacher=trained_cnn)
    ctx.stage_index = 3
    out = qat(as_artifact(student), QatConfig(type="qat", epochs=2), ctx)
    assert out.format == "onnx" and out.model is None and out.path.name == "04_qat.onnx"
    assert out.lineage == ("student",) and out.params is not None
    info = out.info
    bits = 7 if reduce_range("auto") else 8  # 7-bit weights on x86 without VNNI
    assert info["weight_bits"] == bits and info["int8_weight_tensors"] == 3 and info["quantize_linear_nodes"] == 6
    assert info["parity_rel_max_diff"] <= 0.05 and info["parity_argmax_agreement"] >= 0.99
    ints = [onnx.numpy_helper.to_array(i) for i in onnx.load(str(out.path)).graph.initializer
            if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    assert max(np.abs(a).max() for a in ints) == (1 << (bits - 1)) - 1  # the largest weight of a channel is qmax
    acc = float((run(out.path, splits.test.x).argmax(1) == splits.test.y).mean())
    with torch.no_grad():
        fp32 = float((student(torch.from_numpy(splits.test.x)).argmax(1).numpy() == splits.test.y).mean())
    assert acc >= fp32 - 0.03, (acc, fp32)
    assert len(info["notes"]) == 2 and "QDQ ONNX" in info["notes"][1]


def test_full_range_weights_without_vnni_fail_the_parity_check(student, trained_cnn, as_artifact, make_ctx):
    if not reduce_range("auto"):
        pytest.skip("this CPU has VNNI (or is not x86): 8-bit weights do not saturate onnxruntime's kernels here")
    ctx = make_ctx(teacher=trained_cnn)
    with pytest.raises(StageError, match="this CPU lacks VNNI.*use reduce_range: auto"):
        qat(as_artifact(student), QatConfig(type="qat", epochs=1, reduce_range=False), ctx)


def test_quantize_refuses_a_qat_file(student, splits, make_ctx, tmp_path):
    from compress.stages.quantize import QuantizeConfig, quantize

    model = prepare_qat(student)
    observe(model, splits.train.x, 64, seed=0)
    path = tmp_path / "qat.onnx"
    to_qdq(model, splits.input_shape, path)
    with pytest.raises(StageError, match=r"is already quantized \(DequantizeLinear, QuantizeLinear nodes; a qat stage"):
        quantize(Artifact("qat", "onnx", path=path), QuantizeConfig(type="quantize"), make_ctx())


def test_chain_qat_then_export_is_refused():
    stages = [{"type": "distill", "epochs": 1}, {"type": "qat"}, {"type": "export"}]
    with pytest.raises(ChainError, match="stage 'export' cannot follow stage 'qat' \\(stages\\[1\\]\\): 'export' takes "
                                         "torch models but stage 'qat' \\(stages\\[1\\]\\) produces onnx models"):
        parse_recipe({**MINIMAL_RECIPE, "stages": stages})


def test_chain_qat_after_export_is_refused():
    with pytest.raises(ChainError, match="stage 'qat' cannot follow stage 'export'"):
        parse_recipe({**MINIMAL_RECIPE, "stages": [{"type": "export"}, {"type": "qat"}]})
