"""The ORT mobile format: loads and runs like .onnx; onnxruntime's mobile usability verdict per EP."""

from __future__ import annotations

import numpy as np

from compress._onnx import convert_to_ort
from compress.runtimes import load
from compress.runtimes.ort_mobile import mobile_usability
from onnx_models import matmul_chain


def test_ort_file_runs_like_its_onnx_source(tmp_path):
    src = matmul_chain(tmp_path / "m.onnx")
    ort = convert_to_ort(src, tmp_path / "m.ort")
    r = load(ort)
    assert type(r).__name__ == "OrtRunner" and r.path.suffix == ".ort"
    x = np.random.default_rng(1).random((3, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(r.predict(x), load(src).predict(x), atol=1e-5)


def test_mobile_usability_verdicts(tmp_path):
    src = matmul_chain(tmp_path / "m.onnx")
    res = mobile_usability(src)
    assert set(res) == {"nnapi", "coreml_neuralnetwork", "coreml_mlprogram", "dynamic_inputs", "try_eps"}
    for ep in ("nnapi", "coreml_neuralnetwork", "coreml_mlprogram"):
        v = res[ep]
        assert v["verdict"] in ("YES", "MAYBE", "NO") and 0 <= v["supported_nodes"] <= v["nodes"]
    # the batch axis is symbolic, so the tool also judges the model with fixed shapes
    assert res["dynamic_inputs"] is True and "verdict_if_fixed_shapes" in res["nnapi"]
    assert isinstance(res["try_eps"], bool)
