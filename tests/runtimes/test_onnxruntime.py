"""onnxruntime CPU runner: threads, optimization level, any batch size, a fast timed call."""

from __future__ import annotations

import numpy as np
import pytest

from compress.runtimes import load
from compress.runtimes.onnxruntime import OPT_LEVELS, OrtRunner
from onnx_models import matmul_chain


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return matmul_chain(tmp_path_factory.mktemp("ort") / "m.onnx")


@pytest.mark.parametrize("opt_level", OPT_LEVELS)
def test_every_optimization_level_gives_the_same_logits(model, opt_level):
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    ref = load(model).run(x)
    np.testing.assert_allclose(OrtRunner(model, threads=2, opt_level=opt_level).run(x), ref, atol=1e-5)


def test_any_batch_and_spinning_off(model):
    r = load(model, threads=0)
    assert r.static_batch is None and r.input_shape == (1, 8, 8)
    so = r.session.get_session_options()
    assert so.intra_op_num_threads == 0 and so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    for n in (1, 3, 300):
        assert r.predict(np.zeros((n, 1, 8, 8), np.float32)).shape == (n, 10)
    out = r.timer(np.zeros((4, 1, 8, 8), np.float32))()
    assert out[0].shape == (4, 10)
