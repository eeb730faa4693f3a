"""The built-in cnn on signals C x L (Conv1d, BatchNorm1d): shapes, names, and every stage of the chain on it."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from compress.artifact import Artifact
from compress.context import Context
from compress.data import load_data
from compress.models.zoo import cnn, mlp
from compress.recipe import DataConfig, parse_recipe
from compress.stages.export import ExportConfig, export
from compress.stages.prune import PruneConfig, count_macs_params, prune
from compress.stages.quantize import QuantizeConfig, quantize
from compress.stages.train import cross_entropy
from compress.training import accuracy, fit


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def kinds(model):
    return {type(m) for m in model.modules()}


def test_cnn_on_signals_uses_1d_layers():
    torch.manual_seed(0)
    model = cnn((1, 40), 10, width=16, depth=3).eval()
    assert {nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d} <= kinds(model)
    assert not {nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d} & kinds(model)
    # conv 1->16 (48) + BN 32, conv 16->32 (1536) + BN 64, max-pool to 20, conv 32->64 (6144) + BN 128,
    # average pooling to 4 cells: classifier Linear(64 * 4, 10) = 2570.  Total 10522.
    assert n_params(model) == 10522
    out = model(torch.randn(3, 1, 40))
    assert out.shape == (3, 10) and torch.isfinite(out).all()


def test_image_cnn_is_unchanged():
    """The C x H x W cnn keeps its layers and size (6.1k params for cnn((1, 8, 8), 10, 16, 2))."""
    model = cnn((1, 8, 8), 10, width=16, depth=2)
    assert {nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d} <= kinds(model)
    assert not {nn.Conv1d, nn.BatchNorm1d, nn.AdaptiveAvgPool1d} & kinds(model)
    assert n_params(model) == 6138


def test_same_layer_names_as_the_image_cnn():
    """Recipes name layers (features.N, pool, classifier): the 1-D cnn has the same ones."""
    names = lambda m: [n for n, _ in m.named_modules()]  # noqa: E731
    assert names(cnn((1, 40), 10, 8, 3)) == names(cnn((1, 8, 8), 10, 8, 3))


@pytest.mark.parametrize("shape", [(2, 3), (1, 1), (3, 7)])
def test_short_signals(shape):
    model = cnn(shape, 4, width=4, depth=4).eval()
    assert model(torch.randn(2, *shape)).shape == (2, 4)


def test_flat_input_is_still_refused():
    with pytest.raises(ValueError, match=r"arch 'cnn' needs image input C x H x W \(got input shape \(40,\)\)"):
        cnn((40,), 10)


def test_mlp_flattens_signals():
    model = mlp((1, 40), 10, width=32, depth=2).eval()
    assert model(torch.randn(2, 1, 40)).shape == (2, 10)


@pytest.fixture(scope="module")
def signals():
    return load_data(DataConfig(source="mnist1d"), seed=0)


@pytest.fixture(scope="module")
def trained(signals):
    torch.manual_seed(0)
    return fit(cnn((1, 40), 10, width=8, depth=2), signals, epochs=2, lr=3e-3, batch_size=64, seed=0,
               loss_fn=cross_entropy, desc="test", quiet=True).model.eval()


def _ctx(signals, teacher, out_dir: Path) -> Context:
    recipe = parse_recipe({"name": "m1d", "data": {"source": "mnist1d"},
                           "teacher": {"model": {"arch": "cnn", "width": 8, "depth": 2}},
                           "student": {"model": {"arch": "cnn", "width": 8, "depth": 2}}, "stages": [{"type": "export"}]})
    return Context(recipe=recipe, splits=signals, teacher=teacher, out_dir=out_dir, quiet=True)


def _artifact(model) -> Artifact:
    macs, params = count_macs_params(model, (1, 40))
    return Artifact("student", "torch", copy.deepcopy(model), params=params, macs=macs)


def test_prune_export_quantize_the_1d_cnn(signals, trained, tmp_path):
    """torch-pruning's graph removes Conv1d channels and their BatchNorm1d; ONNX (and the ORT format) match
    torch; static INT8 calibrates and stays close to the fp32 file."""
    ctx = _ctx(signals, trained, tmp_path)
    pruned = prune(_artifact(trained), PruneConfig(type="prune", ratio=0.5, round_to=None), ctx)
    convs = [m for m in pruned.model.modules() if isinstance(m, nn.Conv1d)]
    assert [c.out_channels for c in convs] == [4, 8]
    assert [b.num_features for b in pruned.model.modules() if isinstance(b, nn.BatchNorm1d)] == [4, 8]
    assert pruned.model.classifier.out_features == 10 and pruned.params < _artifact(trained).params
    assert accuracy(pruned.model, signals.val.x, signals.val.y) > 0.1

    exported = export(pruned, ExportConfig(type="export", format=["onnx", "ort"]), ctx)  # fails beyond tolerance
    assert exported.info["parity_max_abs_diff"] <= 1e-4 and exported.info["ort_parity_max_abs_diff"] <= 1e-4
    assert Path(exported.info["ort_path"]).is_file()
    sess = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    x = np.ascontiguousarray(signals.val.x[:64])
    with torch.no_grad():
        want = pruned.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0], want, atol=1e-4)

    q = quantize(exported, QuantizeConfig(type="quantize", mode="int8_static"), ctx)
    qs = ort.InferenceSession(str(q.path), providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in __import__("onnx").load(str(q.path)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    pred = qs.run(None, {qs.get_inputs()[0].name: np.ascontiguousarray(signals.val.x)})[0].argmax(1)
    fp32 = sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(signals.val.x)})[0].argmax(1)
    assert (pred == fp32).mean() > 0.9


@pytest.mark.slow  # 10-30 s each: the converters, not the model
@pytest.mark.parametrize("fmt, module", [("executorch", "executorch"), ("litert", "litert_torch")])
def test_mobile_formats_of_the_1d_cnn(signals, trained, tmp_path, fmt, module):
    pytest.importorskip(module)
    ctx = _ctx(signals, trained, tmp_path)
    out = export(_artifact(trained), ExportConfig(type="export", format=["onnx", fmt]), ctx)  # fails beyond tolerance
    assert Path(out.info["files"][fmt]).is_file() and out.info[f"{fmt}_parity_max_abs_diff"] <= 1e-4
