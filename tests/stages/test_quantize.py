"""Post-training quantization with onnxruntime: int8 static/dynamic, int4 weight-only, Gemm -> MatMul."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from compress._onnx import export_onnx
from compress.artifact import Artifact
from compress.errors import StageError
from compress.models import zoo
from compress.stages.export import ExportConfig, export
from compress.stages.quantize import QuantizeConfig, gemm_to_matmul, quantize


def logits(path_or_bytes, x):
    sess = ort.InferenceSession(path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x)})[0]


def accuracy(path, data):
    return float((logits(path, data.x).argmax(1) == data.y).mean())


def ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def qcfg(**kw) -> QuantizeConfig:
    return QuantizeConfig.model_validate({"type": "quantize", **kw})


@pytest.fixture(scope="module")
def fp32_cnn(splits, train, as_artifact, tmp_path_factory, trained_cnn):
    """A width-16 CNN (6.1k params, ~25 kB as fp32 ONNX), exported with the ORT format too.

    The shared width-8 CNN is too small for this: its weights are 7.7 kB, and QDQ scales, zero points
    and node names make its INT8 file as large as the fp32 one (8927 vs 8928 bytes, measured).
    """
    from compress.context import Context
    from compress.recipe import parse_recipe

    torch.manual_seed(0)
    model = train(zoo.cnn((1, 8, 8), 10, width=16, depth=2), splits)
    recipe = parse_recipe({"name": "q", "teacher": {"model": {"arch": "cnn"}}, "student": {"model": {"arch": "cnn"}},
                           "stages": [{"type": "export"}]})
    ctx = Context(recipe=recipe, splits=splits, teacher=trained_cnn, out_dir=tmp_path_factory.mktemp("fp32_cnn"), quiet=True)
    return export(as_artifact(model), ExportConfig(type="export", format=["onnx", "ort"]), ctx)


@pytest.fixture(scope="module")
def fp32_mlp(splits, trained_mlp, tmp_path_factory):
    path = export_onnx(trained_mlp, splits.input_shape, tmp_path_factory.mktemp("fp32_mlp") / "mlp.onnx")
    return Artifact("export", "onnx", path=path, info={"formats": ["onnx"]})


@pytest.fixture
def ctx(make_ctx):
    c = make_ctx()
    c.stage_index = 1
    return c


def test_int8_static(fp32_cnn, ctx, splits, tmp_path):
    out = quantize(fp32_cnn, qcfg(mode="int8_static"), ctx)
    assert out.format == "onnx" and out.path == tmp_path / "stages" / "02_quantize_int8_static.onnx"
    assert out.lineage == ("student", "export") and out.params == fp32_cnn.params
    fp32_acc, int8_acc = accuracy(fp32_cnn.path, splits.test), accuracy(out.path, splits.test)
    assert fp32_acc > 0.85  # the model learned something, so the comparison means something
    assert abs(int8_acc - fp32_acc) <= 0.01, (fp32_acc, int8_acc)
    assert out.path.stat().st_size < 0.7 * fp32_cnn.path.stat().st_size
    model = onnx.load(str(out.path))
    kinds = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in kinds and "DequantizeLinear" in kinds
    # the conv and linear weights are stored as INT8
    int8_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    assert len(int8_weights) == 3
    assert not [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and np.prod(i.dims) > 100]
    info = out.info
    assert info["mode"] == "int8_static" and info["calibration"] == "minmax" and info["calibration_split"] == "train"
    assert info["calibration_samples"] == 256 and info["per_channel"] is True and info["format"] == "qdq"
    assert isinstance(info["reduce_range"], bool)


def test_int8_static_writes_ort_when_export_did(fp32_cnn, ctx, splits):
    out = quantize(fp32_cnn, qcfg(mode="int8_static"), ctx)
    assert out.info["formats"] == ["onnx", "ort"]
    ort_file = out.path.with_suffix(".ort")
    assert out.info["ort_path"] == str(ort_file) and ort_file.is_file()
    a, b = logits(ort_file, splits.test.x).argmax(1), logits(out.path, splits.test.x).argmax(1)
    assert (a == b).mean() >= 0.98


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_calibration_methods(method, fp32_cnn, ctx, splits):
    out = quantize(fp32_cnn, qcfg(mode="int8_static", calibration={"method": method, "samples": 128}), ctx)
    assert out.info["calibration"] == method and out.info["calibration_samples"] == 128
    ref = logits(fp32_cnn.path, splits.test.x).argmax(1)
    got = logits(out.path, splits.test.x).argmax(1)
    assert (ref == got).mean() >= 0.95


@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_calibration_samples_not_a_multiple_of_the_batch(method, fp32_cnn, ctx, splits):
    assert len(splits.train) == 1079
    out = quantize(fp32_cnn, qcfg(mode="int8_static", calibration={"method": method, "samples": 1079, "batch_size": 32}), ctx)
    # histogram calibrators need equal batches: 1079 is cut to 33 full batches of 32
    assert out.info["calibration_samples"] == 1056
    assert abs(accuracy(out.path, splits.test) - accuracy(fp32_cnn.path, splits.test)) <= 0.02


def test_calibration_fewer_samples_than_a_batch(fp32_cnn, ctx):
    out = quantize(fp32_cnn, qcfg(mode="int8_static", calibration={"method": "entropy", "samples": 10}), ctx)
    assert out.info["calibration_samples"] == 10


def test_int8_dynamic(fp32_cnn, ctx, splits):
    out = quantize(fp32_cnn, qcfg(mode="int8_dynamic"), ctx)
    assert out.path.name == "02_quantize_int8_dynamic.onnx"
    kinds = ops(out.path)
    assert {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"} & set(kinds), kinds
    ref = logits(fp32_cnn.path, splits.test.x).argmax(1)
    got = logits(out.path, splits.test.x).argmax(1)
    assert (ref == got).mean() >= 0.95
    assert out.info == {"mode": "int8_dynamic", "per_channel": True, "formats": ["onnx", "ort"],
                        "ort_path": str(out.path.with_suffix(".ort"))}


def test_int4_weight_only_on_an_mlp(fp32_mlp, ctx, splits):
    out = quantize(fp32_mlp, qcfg(mode="int4_weight_only"), ctx)
    kinds = ops(out.path)
    n = kinds.count("MatMulNBits")
    # Linear(64, 64), Linear(64, 64) and the classifier Linear(64, 10) (a Gemm, rewritten to MatMul first)
    assert n == 3 and out.info["matmulnbits_nodes"] == n
    assert "Gemm" not in kinds and "MatMul" not in kinds
    assert out.info["block_size"] == 32
    assert abs(accuracy(out.path, splits.test) - accuracy(fp32_mlp.path, splits.test)) <= 0.02
    assert out.path.stat().st_size < 0.5 * fp32_mlp.path.stat().st_size
    assert "ort_path" not in out.info and out.info["formats"] == ["onnx"]


class ConvOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def test_int4_without_linear_layers_is_a_stage_error(ctx, tmp_path):
    path = export_onnx(ConvOnly().eval(), (1, 8, 8), tmp_path / "convonly.onnx")
    art = Artifact("export", "onnx", path=path)
    with pytest.raises(StageError, match="int4_weight_only found no linear layer"):
        quantize(art, qcfg(mode="int4_weight_only"), ctx)
    assert not (tmp_path / "stages" / "02_quantize_int4_weight_only.onnx").exists()  # nothing half-written


def test_gemm_to_matmul_keeps_outputs(fp32_cnn, fp32_mlp, splits):
    for art in (fp32_cnn, fp32_mlp):
        model = onnx.load(str(art.path))
        gemms = sum(n.op_type == "Gemm" for n in model.graph.node)
        assert gemms >= 1
        matmuls_before = sum(n.op_type == "MatMul" for n in model.graph.node)
        rewritten = gemm_to_matmul(model)
        kinds = [n.op_type for n in rewritten.graph.node]
        assert "Gemm" not in kinds
        assert kinds.count("MatMul") == matmuls_before + gemms
        onnx.checker.check_model(rewritten)
        # the unused transposed-weight originals are dropped
        used = {i for n in rewritten.graph.node for i in n.input}
        assert all(i.name in used for i in rewritten.graph.initializer)
        x = splits.test.x
        diff = np.abs(logits(rewritten.SerializeToString(), x) - logits(art.path, x)).max()
        assert diff < 1e-5


def test_gemm_to_matmul_without_bias_and_without_transpose():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)  # K x N, transB = 0
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], name="g")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    rewritten = gemm_to_matmul(model)
    assert [n.op_type for n in rewritten.graph.node] == ["MatMul"]
    x = rng.normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(logits(rewritten.SerializeToString(), x), x @ w, rtol=1e-5, atol=1e-5)
