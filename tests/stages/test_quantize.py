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


# --- accuracy-aware quantization, mixed precision, auto ------------------------------------------------------

DEAD = 0  # pixel 0 of the digits images is 0 in every split: a weight on it never changes the fp32 output


def _mlp3(splits, train):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():  # hidden unit 0 of both hidden layers dead from the start: -1 before ReLU, no gradient
        for lin in (model[1], model[3]):
            lin.weight[0] = 0.0
            lin.bias[0] = -1.0
    return train(model, splits, epochs=12, lr=1e-2)


@pytest.fixture(scope="module")
def mlp3(splits, train):
    """Flatten, Linear(64,32), ReLU, Linear(32,32), ReLU, Linear(32,10), trained for a few epochs."""
    return _mlp3(splits, train)


def with_outliers(model: nn.Module, layers: tuple[int, ...]) -> nn.Module:
    """A copy whose linear layers ``layers`` (0, 1, 2) get weights of 500 on an input that is always 0
    (pixel 0, or the dead hidden unit 0): the fp32 function is unchanged, but INT8 of such a layer rounds
    every ordinary weight to 0, so that layer alone ruins accuracy."""
    import copy

    model = copy.deepcopy(model)
    lin = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for i in sorted(layers, reverse=True):  # check a unit is dead before its own row gets an outlier
            if i == 0:
                lin[0].weight[:, DEAD] = 500.0
            else:
                assert float(lin[i - 1].bias[0]) == -1.0 and not lin[i - 1].weight[0].any()  # unit 0 still dead
                lin[i].weight[:, 0] = 500.0
    return model.eval()


def onnx_art(model, splits, path) -> Artifact:
    return Artifact("export", "onnx", path=export_onnx(model, splits.input_shape, path), info={"formats": ["onnx"]})


@pytest.fixture
def fast_ctx(make_ctx):
    """A context whose recipe times candidates with few rounds (tests check choices, not speed)."""
    from tests.conftest import MINIMAL_RECIPE

    c = make_ctx(recipe={**MINIMAL_RECIPE, "bench": {"rounds": 3, "calls": 2}})
    c.stage_index = 1
    return c


def val_accuracy(path, splits):
    return accuracy(path, splits.val)


def gemm_names(path):
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Gemm"]


def test_accuracy_aware_int8_keeps_the_sensitive_layer_fp32(mlp3, splits, fast_ctx, tmp_path):
    art = onnx_art(with_outliers(mlp3, (1,)), splits, tmp_path / "out1.onnx")
    fp32 = val_accuracy(art.path, splits)
    assert fp32 > 0.85 and fp32 == val_accuracy(onnx_art(mlp3, splits, tmp_path / "clean.onnx").path, splits)
    plain = quantize(art, qcfg(mode="int8_static"), fast_ctx)
    assert val_accuracy(plain.path, splits) < fp32 - 0.3  # the outlier layer ruins plain INT8
    out = quantize(art, qcfg(mode="int8_static", max_accuracy_drop=0.005), fast_ctx)
    info = out.info
    assert info["fp32_layers"] == ["/3/Gemm"] and info["budget_met"] is True
    # the reported numbers are those of the file that ships
    assert info["val_accuracy"] == val_accuracy(out.path, splits) and info["source_val_accuracy"] == fp32
    assert fp32 - info["val_accuracy"] <= 0.005 and info["val_drop"] == pytest.approx(fp32 - info["val_accuracy"])
    assert abs(accuracy(out.path, splits.test) - accuracy(art.path, splits.test)) <= 0.02
    # that layer is an fp32 Gemm; the other two take INT8 weights through DequantizeLinear
    model = onnx.load(str(out.path))
    fp32_gemm = next(n for n in model.graph.node if n.name == "/3/Gemm")
    inits = {i.name: i for i in model.graph.initializer}
    assert inits[fp32_gemm.input[1]].data_type == onnx.TensorProto.FLOAT
    assert len([i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]) == 2
    sens, steps = info["tables"]
    rows = {r[0]: r for r in sens["rows"]}
    assert rows["/3/Gemm"][6] == 1 and rows["/3/Gemm"][7] == "kept fp32"  # rank 1, kept
    assert rows["/1/Gemm"][7] == rows["/5/Gemm"][7] == "INT8"
    assert float(rows["/3/Gemm"][4].rstrip("%")) > 30  # alone it costs over 30 points
    assert [r[0] for r in steps["rows"]] == [0, 1] and steps["rows"][-1][4] == "yes"
    assert "/3/Gemm" in info["notes"][0]


def test_accuracy_aware_int8_no_layer_needs_fp32(mlp3, splits, fast_ctx, tmp_path):
    art = onnx_art(mlp3, splits, tmp_path / "clean.onnx")
    out = quantize(art, qcfg(mode="int8_static", max_accuracy_drop=0.02), fast_ctx)
    assert out.info["fp32_layers"] == [] and out.info["budget_met"] and out.info["tables"] == []
    assert "no layer needs to stay fp32" in out.info["notes"][0]
    assert out.info["quantized_files_scored"] == 2  # all-INT8 once, then the shipped file re-measured


def test_nothing_meets_the_budget_keeps_the_best_file(mlp3, splits, fast_ctx, tmp_path, capsys):
    art = onnx_art(with_outliers(mlp3, (0, 1, 2)), splits, tmp_path / "out3.onnx")
    fast_ctx.quiet = False
    out = quantize(art, qcfg(mode="int8_static", max_accuracy_drop=0.005), fast_ctx)
    info = out.info
    assert out.path.is_file() and info["budget_met"] is False
    # every plan leaves one ruinous layer INT8 (at most all but one stays fp32): all are at chance level,
    # and the tie goes to the plan with the fewest fp32 layers
    steps = info["tables"][1]["rows"]
    assert [r[0] for r in steps] == [0, 1, 2] and all(r[4] == "no" for r in steps)
    assert info["fp32_layers"] == []
    assert info["val_accuracy"] == val_accuracy(out.path, splits) and info["val_drop"] > 0.005
    assert "No plan met the budget of 0.50%" in info["notes"][0]
    assert len(info["tables"][0]["rows"]) == 3 and len(info["tables"][1]["rows"]) == 3
    assert "no file met max_accuracy_drop 0.50%" in capsys.readouterr().err


def test_accuracy_aware_int4_and_dynamic(mlp3, splits, fast_ctx, tmp_path):
    # Linear(32, 32): one INT4 block of 32 spans all its inputs, so the outlier zeroes every other weight
    art = onnx_art(with_outliers(mlp3, (1,)), splits, tmp_path / "out1.onnx")
    out = quantize(art, qcfg(mode="int4_weight_only", max_accuracy_drop=0.005), fast_ctx)
    assert out.info["fp32_layers"][0] == "/3/Gemm" and out.info["budget_met"]  # the ruinous layer goes first
    assert ops(out.path).count("MatMulNBits") == out.info["matmulnbits_nodes"] == 3 - len(out.info["fp32_layers"])
    dyn = quantize(art, qcfg(mode="int8_dynamic", max_accuracy_drop=0.005), fast_ctx)
    assert dyn.info["budget_met"] and dyn.info["val_drop"] <= 0.005


def test_mixed_int4_for_large_linear_layers_int8_elsewhere(mlp3, splits, fast_ctx, tmp_path):
    art = onnx_art(mlp3, splits, tmp_path / "clean.onnx")
    # 2048 and 1024 weights are INT4 candidates at this threshold; the classifier's 320 are not
    out = quantize(art, qcfg(mode="mixed", int4_min_weights=1000, max_accuracy_drop=0.02), fast_ctx)
    info = out.info
    assert info["plan"]["/5/Gemm"] == "int8"
    n4 = sum(p == "int4" for p in info["plan"].values())
    assert n4 >= 1 and ops(out.path).count("MatMulNBits") == n4 == info["matmulnbits_nodes"]
    assert "QuantizeLinear" in ops(out.path) and "DequantizeLinear" in ops(out.path)
    assert info["budget_met"] and info["val_accuracy"] == val_accuracy(out.path, splits)
    assert abs(accuracy(out.path, splits.test) - accuracy(art.path, splits.test)) <= 0.03
    assert [r[0] for r in info["tables"][-1]["rows"]] and all(r[0] in ("/1/Gemm", "/3/Gemm") for r in info["tables"][-1]["rows"])


def test_mixed_without_large_layers_is_int8(mlp3, splits, fast_ctx, tmp_path):
    art = onnx_art(mlp3, splits, tmp_path / "clean.onnx")
    out = quantize(art, qcfg(mode="mixed"), fast_ctx)  # default threshold 16384 > every layer here
    assert set(out.info["plan"].values()) <= {"int8", "fp32"} and "MatMulNBits" not in ops(out.path)
    assert out.info["max_accuracy_drop"] == 0.01
    assert any("no INT4 candidate" in n for n in out.info["notes"])


def test_auto_keeps_the_fastest_candidate_within_the_budget(mlp3, splits, fast_ctx, tmp_path):
    art = onnx_art(with_outliers(mlp3, (1,)), splits, tmp_path / "out1.onnx")
    out = quantize(art, qcfg(mode="auto", max_accuracy_drop=0.005), fast_ctx)
    info = out.info
    cands = {c["name"]: c for c in info["candidates"]}
    assert list(cands)[:3] == ["fp32 (source)", "INT8 static QDQ", "INT8 static QOPERATOR"]
    assert "INT8 static QDQ, 1 layer(s) fp32" in cands and "INT8 dynamic" in cands
    assert sum(n.startswith("INT4 weight-only, accuracy_level") for n in cands) == 4
    assert cands["INT8 static QDQ"]["verdict"].startswith("misses the budget")  # the outlier layer
    winner = cands[info["winner"]]
    assert winner["verdict"] == "winner" and winner["val_drop"] <= 0.005
    eligible = [c for c in cands.values() if c["val_drop"] <= 0.005 + 1e-9]
    fastest = min(c["latency_ms"]["p50"] for c in eligible)
    assert winner["latency_ms"]["p50"] <= fastest * 1.03 + 1e-12
    assert info["val_accuracy"] == val_accuracy(out.path, splits) == winner["val_accuracy"]
    assert isinstance(info["cpu"]["features"], list) and any("features" in n for n in info["notes"])
    assert len(info["tables"][0]["rows"]) == len(cands)


def test_auto_without_linear_layers_has_no_int4_candidate(ctx, fast_ctx, tmp_path):
    path = export_onnx(ConvOnly().eval(), (1, 8, 8), tmp_path / "convonly.onnx")
    out = quantize(Artifact("export", "onnx", path=path, info={"formats": ["onnx"]}), qcfg(mode="auto"), fast_ctx)
    int4 = next(c for c in out.info["candidates"] if c["name"].startswith("INT4"))
    assert int4["verdict"].startswith("not made: no linear layer") and out.path.is_file()


def test_int4_accuracy_level_auto(fp32_mlp, splits, fast_ctx):
    out = quantize(fp32_mlp, qcfg(mode="int4_weight_only", accuracy_level="auto"), fast_ctx)
    info = out.info
    assert info["accuracy_level"] in (0, 1, 2, 4) and info["accuracy_level_choice"] == "auto"
    rows = info["tables"][0]["rows"]
    assert [r[0] for r in rows] == ["fp32 (source, reference)"] + [f"INT4 accuracy_level {lv}" for lv in (0, 1, 2, 4)]
    assert rows[0][-1] == "reference only"
    node = next(n for n in onnx.load(str(out.path)).graph.node if n.op_type == "MatMulNBits")
    level = next((a.i for a in node.attribute if a.name == "accuracy_level"), 0)  # absent: the default, 0
    assert level == info["accuracy_level"]


@pytest.mark.parametrize("keys, message", [
    ({"mode": "int8_static", "accuracy_level": "auto"}, "accuracy_level 'auto' is for mode int4_weight_only"),
    ({"mode": "mixed", "format": "qoperator"}, "mode mixed writes QDQ INT8 beside MatMulNBits; use format: qdq"),
    ({"mode": "int8_static", "max_accuracy_drop": 1.5}, "less than or equal to 1"),
])
def test_bad_keys_are_recipe_errors(keys, message):
    from compress.errors import RecipeError
    from compress.recipe import parse_recipe
    from tests.conftest import MINIMAL_RECIPE

    with pytest.raises(RecipeError, match=message):
        parse_recipe({**MINIMAL_RECIPE, "stages": [{"type": "export"}, {"type": "quantize", **keys}]})


def test_budget_defaults():
    assert qcfg().budget is None and qcfg(mode="auto").budget == 0.01 and qcfg(mode="mixed").budget == 0.01
    assert qcfg(mode="int4_weight_only", accuracy_level="auto").budget == 0.01
    assert qcfg(mode="auto", max_accuracy_drop=0.002).budget == 0.002


def test_int8_static_text_transformer(text_splits, train, as_artifact, trained_cnn, tmp_path):
    """The byte-level text_transformer goes through INT8 static quantization: the byte input stays
    float (Round, Clip and Cast are not quantized), the embedding table and the linear layers are INT8,
    and the predictions stay the fp32 model's."""
    from compress.context import Context
    from compress.recipe import parse_recipe

    torch.manual_seed(0)
    model = train(zoo.text_transformer(text_splits.input_shape, 8, width=16, depth=1, heads=4, patch=4), text_splits, epochs=8)
    spec = {"arch": "text_transformer", "width": 16, "depth": 1, "patch": 4}
    recipe = parse_recipe({"name": "q", "data": {"source": "stdlib-text", "length": 32},
                           "teacher": {"model": spec}, "student": {"model": spec}, "stages": [{"type": "export"}]})
    ctx = Context(recipe=recipe, splits=text_splits, teacher=model, out_dir=tmp_path, quiet=True)
    fp32 = export(as_artifact(model, text_splits.input_shape), ExportConfig(type="export", format=["onnx"]), ctx)
    ctx.stage_index = 1
    out = quantize(fp32, qcfg(mode="int8_static", calibration={"samples": 128}), ctx)
    graph = onnx.load(str(out.path)).graph
    kinds = [n.op_type for n in graph.node]
    assert kinds.count("Cast") == 1 and "QuantizeLinear" in kinds
    eight_bit = {i.name for i in graph.initializer if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)}
    assert {"features.0.embed.weight_quantized", "features.0.pos_quantized", "classifier.weight_quantized"} <= eight_bit
    assert not [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and np.prod(i.dims) > 100]
    fp32_acc, int8_acc = accuracy(fp32.path, text_splits.test), accuracy(out.path, text_splits.test)
    assert fp32_acc > 0.25  # 8 classes: chance is 0.125
    assert abs(int8_acc - fp32_acc) <= 0.05, (fp32_acc, int8_acc)
    agree = (logits(fp32.path, text_splits.test.x).argmax(1) == logits(out.path, text_splits.test.x).argmax(1)).mean()
    assert agree >= 0.9
