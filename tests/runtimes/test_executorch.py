"""ExecuTorch (.pte, XNNPACK): fp32 parity, static batch, the 8-bit pt2e path, and the export/quantize stages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("executorch")

from compress.runtimes import load  # noqa: E402
from compress.runtimes.executorch import export_pte, export_pte_int8  # noqa: E402


@pytest.fixture(scope="module")
def files(trained_cnn, splits, tmp_path_factory):
    d = tmp_path_factory.mktemp("pte")
    fp32 = export_pte(trained_cnn, (1, 8, 8), d / "m.pte")
    int8 = export_pte_int8(trained_cnn, (1, 8, 8), d / "m8.pte", splits.train.x[:256])
    return fp32, int8


def test_fp32_parity_and_static_batch(files, trained_cnn, splits):
    r = load(files[0])
    assert r.static_batch == 1 and r.input_shape == (1, 8, 8)
    x = splits.test.x[:10]
    with torch.no_grad():
        ref = trained_cnn(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(r.predict(x), ref, atol=1e-5, rtol=0)
    # a batch of 10 through a batch-1 file: the timer runs it as 10 calls
    assert r.timer(x)().shape == (10, 10)


def test_static_batch_export(trained_cnn, tmp_path):
    r = load(export_pte(trained_cnn, (1, 8, 8), tmp_path / "b4.pte", batch=4))
    assert r.static_batch == 4
    assert r.predict(np.zeros((6, 1, 8, 8), np.float32)).shape == (6, 10)  # 4 + 2 padded to 4


def test_int8_is_smaller_and_agrees(files, trained_cnn, splits):
    fp32, int8 = (load(p) for p in files)
    assert files[1].stat().st_size < files[0].stat().st_size
    x = splits.test.x
    agree = (fp32.predict(x).argmax(1) == int8.predict(x).argmax(1)).mean()
    assert agree >= 0.95


def test_export_and_quantize_stages_write_pte(trained_cnn, as_artifact, make_ctx, tmp_path):
    from compress.stages.export import ExportConfig, export
    from compress.stages.quantize import QuantizeConfig, quantize

    ctx = make_ctx()
    out = export(as_artifact(trained_cnn), ExportConfig(type="export", format=["onnx", "executorch"]), ctx)
    pte = tmp_path / "stages" / "01_export.pte"
    assert out.info["files"] == {"executorch": str(pte)} and pte.is_file()
    assert out.info["executorch_parity_max_abs_diff"] < 1e-4 and out.info["static_batch"] == 1
    assert out.model is not None  # kept for the 8-bit path
    ctx.stage_index = 1
    q = quantize(out, QuantizeConfig(type="quantize"), ctx)
    q_pte = tmp_path / "stages" / "02_quantize_int8_static.pte"
    assert q.info["files"] == {"executorch": str(q_pte)} and q_pte.is_file()
    assert q.info["runtime_calibration_samples"] == q.info["calibration_samples"]
    dyn = quantize(out, QuantizeConfig(type="quantize", mode="int8_dynamic"), ctx)
    assert dyn.info["files"] == {"executorch": str(pte)} and "stay fp32" in dyn.info["runtime_files_note"]
