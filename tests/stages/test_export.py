"""torch -> ONNX export: dynamic batch axis, parity with torch, the ORT mobile format."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from compress.errors import StageError
from compress.stages import export as export_module
from compress.stages.export import ExportConfig, export


def torch_logits(model, x):
    with torch.no_grad():
        return model.eval()(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def ort_logits(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x)})[0]


@pytest.fixture
def exported(trained_cnn, as_artifact, make_ctx):
    art = as_artifact(trained_cnn)
    ctx = make_ctx()
    return art, export(art, ExportConfig(type="export"), ctx), ctx


def test_export_writes_an_onnx_file(exported, tmp_path):
    art, out, ctx = exported
    assert out.format == "onnx" and out.model is None
    assert out.path == tmp_path / "stages" / "01_export.onnx" and out.path.is_file()
    assert out.lineage == ("student",) and out.name == "export"
    assert (out.params, out.macs) == (art.params, art.macs)  # inherited from the torch model
    assert out.info["opset"] == 17 and out.info["exporter"] == "torchscript" and out.info["formats"] == ["onnx"]
    assert "ort_path" not in out.info
    model = onnx.load(str(out.path))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 8, 8]  # symbolic batch axis


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_onnxruntime_matches_torch(exported, trained_cnn, splits, batch):
    _, out, _ = exported
    x = splits.val.x[:batch]
    got = ort_logits(out.path, x)
    assert got.shape == (batch, 10)
    np.testing.assert_allclose(got, torch_logits(trained_cnn, x), rtol=0, atol=1e-4)
    assert (got.argmax(1) == torch_logits(trained_cnn, x).argmax(1)).all()


def test_parity_is_recorded(exported, trained_cnn, splits):
    _, out, _ = exported
    diff = out.info["parity_max_abs_diff"]
    assert 0 <= diff < 1e-4
    # it is the max abs difference on the first 256 val samples: recompute it
    x = splits.val.x[:256]
    assert diff == pytest.approx(float(np.abs(ort_logits(out.path, x) - torch_logits(trained_cnn, x)).max()), abs=1e-6)


def test_export_does_not_change_the_torch_model(trained_cnn, as_artifact, make_ctx, splits):
    x = splits.val.x[:8]
    before = torch_logits(trained_cnn, x)
    export(as_artifact(trained_cnn), ExportConfig(type="export"), make_ctx())
    np.testing.assert_array_equal(torch_logits(trained_cnn, x), before)


def test_export_with_ort_format(trained_cnn, as_artifact, make_ctx, splits, tmp_path):
    out = export(as_artifact(trained_cnn), ExportConfig(type="export", format=["onnx", "ort"]), make_ctx())
    assert out.info["formats"] == ["onnx", "ort"]
    ort_path = tmp_path / "stages" / "01_export.ort"
    assert out.info["ort_path"] == str(ort_path) and ort_path.is_file()
    assert out.path.suffix == ".onnx" and out.path.is_file()
    assert ort_path.read_bytes()[4:8] == b"ORTM"  # flatbuffer file identifier of the ORT format
    for batch in (1, 7, 64):
        x = splits.val.x[:batch]
        np.testing.assert_allclose(ort_logits(ort_path, x), torch_logits(trained_cnn, x), rtol=0, atol=1e-4)
    assert out.info["ort_parity_max_abs_diff"] < 1e-4


def test_exported_files_carry_preprocessing_and_class_names(trained_cnn, as_artifact, make_ctx):
    """metadata_props of the .onnx file, and of the .ort file converted from it (onnxruntime keeps them)."""
    import json

    from compress._onnx import read_metadata

    out = export(as_artifact(trained_cnn), ExportConfig(type="export", format=["onnx", "ort"]), make_ctx())
    props = {p.key: p.value for p in onnx.load(str(out.path)).metadata_props}
    assert json.loads(props["class_names"]) == [str(i) for i in range(10)]
    assert props["input_layout"] == "NCHW" and props["normalization_in_graph"] == "false"
    assert json.loads(props["input_mean"]) == [0.0] and json.loads(props["input_std"]) == [1.0]
    assert json.loads(props["input_scale"]) == 1 / 16  # digits: grey levels 0..16 scaled to [0, 1]
    pre = json.loads(props["compress.preprocessing"])
    assert pre["input_shape"] == ["batch", 1, 8, 8] and pre["dtype"] == "float32"
    assert read_metadata(out.info["ort_path"]) == props
    sess = ort.InferenceSession(out.info["ort_path"], providers=["CPUExecutionProvider"])
    assert sess.get_modelmeta().custom_metadata_map == props


def test_format_list_is_deduplicated():
    assert ExportConfig(type="export", format=["ort", "onnx", "ort"]).formats == ["ort", "onnx"]
    assert ExportConfig(type="export", format="ort").formats == ["ort"]


def test_opset_can_be_chosen(trained_cnn, as_artifact, make_ctx, splits):
    out = export(as_artifact(trained_cnn), ExportConfig(type="export", opset=13), make_ctx())
    assert onnx.load(str(out.path)).opset_import[0].version == 13
    np.testing.assert_allclose(ort_logits(out.path, splits.val.x[:5]), torch_logits(trained_cnn, splits.val.x[:5]), atol=1e-4)


def test_parity_above_tolerance_is_a_stage_error(trained_cnn, as_artifact, make_ctx, monkeypatch):
    monkeypatch.setattr(export_module, "parity", lambda *a, **k: 0.5)
    with pytest.raises(StageError, match=r"differ from torch's by 0.5 \(tolerance 0.0001\).*not trustworthy"):
        export(as_artifact(trained_cnn), ExportConfig(type="export"), make_ctx())
    monkeypatch.setattr(export_module, "parity", lambda *a, **k: float("nan"))
    with pytest.raises(StageError, match="differ from torch's by nan"):
        export(as_artifact(trained_cnn), ExportConfig(type="export"), make_ctx())


def test_format_all_is_every_installed_format(monkeypatch):
    import importlib.util

    from compress.stages.export import ExportConfig, installed_formats

    assert ExportConfig(type="export", format="all").formats == installed_formats()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m in ("executorch", "litert_torch") else real(m, *a))
    assert ExportConfig(type="export", format="all").formats == ["onnx", "ort"]


def test_missing_extra_is_a_validation_error_naming_pip(monkeypatch):
    import importlib.util

    from pydantic import ValidationError

    from compress.stages.export import ExportConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "executorch" else real(m, *a))
    with pytest.raises(ValidationError, match=r"format 'executorch' needs the optional package 'executorch': "
                                              r"pip install 'compress\[executorch\]'"):
        ExportConfig(type="export", format=["onnx", "executorch"])
