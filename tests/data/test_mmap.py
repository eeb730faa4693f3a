"""Large npz data is memory-mapped: splits read rows on demand instead of loading the file whole."""

from __future__ import annotations

import tracemalloc

import numpy as np
import torch

from compress.data import Rows, load_data
from compress.recipe import DataConfig


def _write(path, n=12_000, compressed=False):
    rng = np.random.default_rng(0)
    x = rng.random((n, 1, 16, 16), dtype=np.float32)
    y = np.arange(n) % 5
    (np.savez_compressed if compressed else np.savez)(path, x=x, y=y)
    return x, y


def test_uncompressed_npz_is_memory_mapped_and_reads_the_same_values(tmp_path):
    x, y = _write(tmp_path / "big.npz")
    splits = load_data(DataConfig(source="npz", path=tmp_path / "big.npz"), seed=0)
    assert isinstance(splits.train.x, Rows)
    assert splits.train.x.shape == (len(splits.train), 1, 16, 16)
    in_memory = load_data(DataConfig(source="npz", path=tmp_path / "big.npz"), seed=0)
    assert splits.fingerprint == in_memory.fingerprint
    # rows come back in the order asked, equal to the file's
    from compress.data import stratified_split

    tr, _, te = stratified_split(y, 0.2, 0.2, 0)
    pick = np.array([5, 0, 17, 3])
    np.testing.assert_array_equal(splits.train.x[pick], x[tr][pick])
    np.testing.assert_array_equal(splits.test.x[10:20], x[te][10:20])
    np.testing.assert_array_equal(np.asarray(splits.val.x)[:3], splits.val.x[:3])


def test_loading_a_memory_mapped_npz_keeps_memory_flat(tmp_path):
    x, _ = _write(tmp_path / "big.npz")  # 12.3 MB of x
    del x
    tracemalloc.start()
    splits = load_data(DataConfig(source="npz", path=tmp_path / "big.npz"), seed=0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    size = 12_000 * 16 * 16 * 4
    assert peak < 0.45 * size, f"peak {peak / 1e6:.1f} MB while loading {size / 1e6:.1f} MB"
    assert len(splits.train) + len(splits.val) + len(splits.test) == 12_000


def test_compressed_npz_is_loaded_into_memory(tmp_path):
    _write(tmp_path / "small.npz", n=300, compressed=True)
    splits = load_data(DataConfig(source="npz", path=tmp_path / "small.npz"), seed=0)
    assert isinstance(splits.train.x, np.ndarray)


def test_training_reads_batches_from_the_mapped_file(tmp_path):
    from compress.models.zoo import mlp
    from compress.stages.train import cross_entropy
    from compress.training import fit

    _write(tmp_path / "big.npz", n=600)
    splits = load_data(DataConfig(source="npz", path=tmp_path / "big.npz"), seed=0)
    torch.manual_seed(0)
    res = fit(mlp((1, 16, 16), 5, width=8, depth=1), splits, epochs=1, lr=1e-3, batch_size=64, seed=0,
              loss_fn=cross_entropy, desc="train", quiet=True)
    assert res.history[0]["train_loss"] > 0
