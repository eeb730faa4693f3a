"""The built-in MNIST-1D (compress/data/mnist1d.py): the standard dataset, generated offline, split like digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress.data import load_data, peek_data
from compress.data.mnist1d import _gaussian_filter, _interpolate, mnist1d
from compress.errors import DataError
from compress.models.zoo import cnn
from compress.recipe import DataConfig
from compress.stages.train import cross_entropy
from compress.training import accuracy, fit


def test_shape_dtype_and_class_balance():
    x, y = mnist1d()
    assert x.shape == (5000, 1, 40) and x.dtype == np.float32
    assert y.dtype == np.int64 and np.bincount(y).tolist() == [500] * 10
    assert np.isfinite(x).all()
    assert abs(float(x.mean())) < 1e-6 and abs(float(x.std()) - 1) < 1e-5  # centred, unit variance, as the original


def test_equals_the_published_dataset():
    """Values and labels of the published mnist1d_data.pkl (greydanus/mnist1d, its x then x_test; read once,
    by hand, to take these constants): the generator reproduces the standard MNIST-1D, in its order."""
    x, y = mnist1d()
    assert y[:20].tolist() == [2, 6, 4, 5, 6, 6, 6, 0, 3, 1, 6, 9, 4, 3, 4, 5, 1, 9, 0, 3]
    want = [[-0.332006, 1.014668, 0.189981, -0.890166],
            [0.800943, 0.234713, 0.039353, -1.115072],
            [-0.519329, -0.134121, 0.947050, 1.193152]]
    np.testing.assert_allclose(x[[0, 1234, 4999]][:, 0, [0, 13, 27, 39]], want, atol=2e-6)
    assert np.bincount(y[:4000]).tolist() == [398, 396, 411, 394, 394, 402, 401, 404, 402, 398]  # its train split


def test_deterministic_and_copied():
    x1, y1 = mnist1d()
    x1[:] = 0  # the caller's copy: the next load is unaffected
    x2, y2 = mnist1d()
    x3, y3 = mnist1d()
    assert np.array_equal(x2, x3) and np.array_equal(y1, y2) and np.array_equal(y2, y3)
    assert not np.array_equal(mnist1d(seed=1, num_samples=100)[0], mnist1d(num_samples=100)[0])


def test_numpy_ports_match_scipy():
    """The interpolation and gaussian smoothing written out in numpy are scipy's, on the generator's sizes."""
    pytest.importorskip("scipy")
    from scipy.interpolate import interp1d
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    for n_in, n_out in ((60, 72), (72, 72), (84, 72), (72, 40)):
        a = rng.standard_normal(n_in)
        want = interp1d(np.linspace(0, 1, n_in), a, kind="linear")(np.linspace(0, 1, n_out))
        np.testing.assert_allclose(_interpolate(a, n_out), want, rtol=0, atol=1e-12)
    a = rng.standard_normal(72)
    np.testing.assert_allclose(_gaussian_filter(a, 2), gaussian_filter(a, 2), rtol=0, atol=1e-12)


def test_stratified_split_and_seeds():
    cfg = DataConfig(source="mnist1d")
    a, b = load_data(cfg, seed=0), load_data(cfg, seed=1)
    assert (len(a.train), len(a.val), len(a.test)) == (3000, 1000, 1000)
    assert a.input_shape == (1, 40) and a.num_classes == 10
    for part, n in ((a.train, 300), (a.val, 100), (a.test, 100)):
        assert np.bincount(part.y).tolist() == [n] * 10
    assert a.fingerprint != b.fingerprint
    assert not np.array_equal(a.test.x, b.test.x)  # another seed, another split of the same 5000 samples
    assert load_data(cfg, seed=0).fingerprint == a.fingerprint
    assert peek_data(cfg) == ((1, 40), 10)


def test_source_takes_no_path(tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="source 'mnist1d' is built in and takes no path"):
        DataConfig(source="mnist1d", path=tmp_path / "x.npz")


def test_a_3d_npz_is_still_refused(tmp_path):
    """N x C x L is accepted from the built-in signal source only; an npz keeps its documented layouts."""
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((30, 1, 40), np.float32), y=np.arange(30) % 3)
    with pytest.raises(DataError, match=r"x must be N x F or N x C x H x W"):
        load_data(DataConfig(source="npz", path=path), seed=0)


def test_a_tiny_cnn_learns_above_chance():
    splits = load_data(DataConfig(source="mnist1d"), seed=0)
    torch.manual_seed(0)
    model = fit(cnn((1, 40), 10, width=8, depth=2), splits, epochs=3, lr=3e-3, batch_size=64, seed=0,
                loss_fn=cross_entropy, desc="test", quiet=True).model
    assert accuracy(model, splits.val.x, splits.val.y) > 0.3  # chance is 0.1; 0.44 after 3 epochs (2 seeds)


def test_the_shipped_recipe_validates(repo_root, monkeypatch):
    from click.testing import CliRunner

    from compress.cli import cli

    monkeypatch.chdir(repo_root)
    result = CliRunner().invoke(cli, ["validate", "recipes/mnist1d.yaml"])
    assert result.exit_code == 0, result.output
    assert "recipes/mnist1d.yaml: valid" in result.output
    assert "3000 train / 1000 val / 1000 test samples, input (1, 40), 10 classes" in result.output
