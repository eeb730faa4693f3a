"""Data loading: built-in digits, npz, image folders; the stratified split; every DataError message."""

from __future__ import annotations

import os

import numpy as np
import pytest

from compress.data import load_data, peek_data, stratified_split
from compress.errors import DataError
from compress.recipe import DataConfig


def all_of(splits):
    x = np.concatenate([splits.train.x, splits.val.x, splits.test.x])
    y = np.concatenate([splits.train.y, splits.val.y, splits.test.y])
    return x, y


# --- digits ---------------------------------------------------------------------------------------


def test_digits_shape_dtype_and_range(splits):
    x, y = all_of(splits)
    assert x.shape == (1797, 1, 8, 8)
    assert x.dtype == np.float32
    assert y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0  # pixels 0..16 divided by 16
    # every value is a multiple of 1/16
    np.testing.assert_array_equal(np.round(x * 16), x * 16)
    assert splits.num_classes == 10
    assert splits.input_shape == (1, 8, 8)
    assert sorted(np.unique(y).tolist()) == list(range(10))
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert splits.describe().startswith(f"{len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test")


def test_digits_split_is_stratified_per_class(splits):
    _, y = all_of(splits)
    total = np.bincount(y, minlength=10)
    for part, frac in ((splits.val, 0.2), (splits.test, 0.2), (splits.train, 0.6)):
        counts = np.bincount(part.y, minlength=10)
        for c in range(10):
            assert abs(counts[c] - frac * total[c]) <= 1, (c, counts[c], total[c], frac)


def test_split_fractions_follow_the_config():
    s = load_data(DataConfig(split={"val": 0.1, "test": 0.3}), seed=0)
    _, y = all_of(s)
    total = np.bincount(y, minlength=10)
    for part, frac in ((s.val, 0.1), (s.test, 0.3)):
        counts = np.bincount(part.y, minlength=10)
        assert np.all(np.abs(counts - frac * total) <= 1)


def test_stratified_split_indices_are_disjoint_and_cover_everything():
    y = np.repeat(np.arange(5), [10, 11, 12, 13, 30])
    tr, va, te = stratified_split(y, 0.2, 0.25, seed=3)
    assert len(set(tr) & set(va)) == 0 and len(set(tr) & set(te)) == 0 and len(set(va) & set(te)) == 0
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(len(y)))
    for c, n in enumerate([10, 11, 12, 13, 30]):
        assert abs((y[te] == c).sum() - 0.25 * n) <= 1
        assert abs((y[va] == c).sum() - 0.2 * n) <= 1


def test_same_seed_same_split_different_seed_different_split(splits):
    again = load_data(DataConfig(), seed=0)
    for a, b in ((splits.train, again.train), (splits.val, again.val), (splits.test, again.test)):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    assert again.fingerprint == splits.fingerprint

    other = load_data(DataConfig(), seed=1)
    assert other.fingerprint != splits.fingerprint
    assert not np.array_equal(other.test.x, splits.test.x)
    # but the same class proportions
    np.testing.assert_array_equal(np.bincount(other.test.y), np.bincount(splits.test.y))

    y = np.repeat(np.arange(3), 20)
    a, b = stratified_split(y, 0.2, 0.2, 7), stratified_split(y, 0.2, 0.2, 7)
    c = stratified_split(y, 0.2, 0.2, 8)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a[2], c[2])


def test_peek_data_reads_shape_and_classes():
    assert peek_data(DataConfig()) == ((1, 8, 8), 10)


# --- npz ------------------------------------------------------------------------------------------


def npz(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return DataConfig(source="npz", path=path)


def balanced(n_per_class=10, classes=3, features=(5,), seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    x = rng.random((len(y), *features)).astype(np.float32)
    return x, y


def test_npz_flat_features(tmp_path):
    x, y = balanced(10, 3, (5,))
    s = load_data(npz(tmp_path, x=x, y=y), seed=0)
    assert s.input_shape == (5,) and s.num_classes == 3
    assert len(s.train) + len(s.val) + len(s.test) == 30
    assert s.train.x.dtype == np.float32 and s.train.y.dtype == np.int64
    # every row of every split is a row of x with its own label
    rows = {tuple(r): int(lab) for r, lab in zip(x, y)}
    for part in (s.train, s.val, s.test):
        for r, lab in zip(part.x, part.y):
            assert rows[tuple(r)] == lab


def test_npz_images(tmp_path):
    x, y = balanced(6, 4, (2, 4, 4))
    s = load_data(npz(tmp_path, x=x.astype(np.float64), y=y), seed=0)
    assert s.input_shape == (2, 4, 4) and s.num_classes == 4
    assert s.train.x.dtype == np.float32 and s.train.x.shape[1:] == (2, 4, 4)


def test_npz_integer_valued_float_labels_are_accepted(tmp_path):
    x, y = balanced()
    s = load_data(npz(tmp_path, x=x, y=y.astype(np.float32)), seed=0)
    assert s.num_classes == 3 and s.train.y.dtype == np.int64


def test_npz_fractional_labels_are_refused(tmp_path):
    x, y = balanced()
    with pytest.raises(DataError, match="labels 'y' must be integers"):
        load_data(npz(tmp_path, x=x, y=y + 0.5), seed=0)


@pytest.mark.parametrize("x, y, message", [
    (np.zeros((0, 4), np.float32), np.zeros(0, np.int64), "the dataset is empty"),
    (np.ones((12, 4), np.float32), np.zeros(12, np.int64), r"at least 2 classes \(found only \[0\]\)"),
    (np.where(np.arange(30)[:, None] == 4, np.nan, 1.0).repeat(4, 1).astype(np.float32), np.arange(30) % 3,
     "NaN or inf values in 1 samples"),
    (np.ones((30, 4), np.float32), np.arange(30) % 3 - 1, r"labels must be >= 0 \(found -1\)"),
    (np.ones((30, 4), np.float32), (np.arange(30) % 2) * 2, r"labels must be 0\.\.2 with every class present; missing \[1\]"),
    (np.ones((30, 4), np.float32), np.arange(29) % 3, "x has 30 samples but y has 29"),
    (np.ones((30, 4, 4), np.float32), np.arange(30) % 3, r"x must be N x F or N x C x H x W \(got shape \(30, 4, 4\)\)"),
    (np.ones((4, 4), np.float32), np.array([0, 0, 1, 1]), "class 0 has 2 samples; a train/val/test split needs at least 3"),
], ids=["empty", "single-class", "nan", "negative-label", "missing-class", "length-mismatch", "3d-x", "tiny-class"])
def test_npz_data_errors(tmp_path, x, y, message):
    cfg = npz(tmp_path, x=x, y=y)
    with pytest.raises(DataError, match=message) as err:
        load_data(cfg, seed=0)
    assert str(cfg.path) in str(err.value)  # names the file


def test_npz_inf_is_refused(tmp_path):
    x, y = balanced()
    x[[2, 7]] = np.inf
    with pytest.raises(DataError, match="NaN or inf values in 2 samples"):
        load_data(npz(tmp_path, x=x, y=y), seed=0)


def test_npz_without_y(tmp_path):
    x, _ = balanced()
    with pytest.raises(DataError, match=r"npz must hold arrays 'x' and 'y'; missing \['y'\]"):
        load_data(npz(tmp_path, x=x, labels=np.zeros(30)), seed=0)


class _Trap:
    """Pickles to a call of os.system: loading it with pickle would create ``flag``."""

    def __init__(self, flag):
        self.flag = str(flag)

    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


def test_npz_object_arrays_are_refused_without_running_code(tmp_path):
    flag = tmp_path / "npz_pickle_ran"
    x = np.array([_Trap(flag)] * 30, dtype=object)
    _, y = balanced()
    with pytest.raises(DataError, match=r"x holds Python objects \(pickles\), which are refused"):
        load_data(npz(tmp_path, x=x, y=y), seed=0)
    assert not flag.exists()


def test_npz_missing_and_garbage_files(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_data(DataConfig(source="npz", path=tmp_path / "nope.npz"), seed=0)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip file")
    with pytest.raises(DataError, match="not a readable npz file"):
        load_data(DataConfig(source="npz", path=bad), seed=0)


def test_npz_column_vector_labels_give_a_data_error(tmp_path):
    x, y = balanced()
    with pytest.raises(DataError):
        load_data(npz(tmp_path, x=x, y=y[:, None]), seed=0)


# --- image folders --------------------------------------------------------------------------------


def write_images(root, size=(6, 5)):
    """2 classes x 4 PNGs: 'cat' grey levels 0, 10, 20, 30; 'dog' RGB (200 + 10 i, 7, 55 - 10 i)."""
    from PIL import Image

    for i in range(4):
        (root / "cat").mkdir(parents=True, exist_ok=True)
        (root / "dog").mkdir(parents=True, exist_ok=True)
        Image.new("L", size, color=10 * i).save(root / "cat" / f"{i}.png")
        Image.new("RGB", size, color=(200 + 10 * i, 7, 55 - 10 * i)).save(root / "dog" / f"{i}.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "stray.png").write_bytes(b"")  # a file at the top level is not a class


def imagefolder_all(tmp_path, **cfg):
    s = load_data(DataConfig(source="imagefolder", path=tmp_path / "imgs", **cfg), seed=0)
    return s, *all_of(s)


def test_imagefolder_rgb(tmp_path):
    write_images(tmp_path / "imgs")
    s, x, y = imagefolder_all(tmp_path)
    assert s.num_classes == 2 and s.input_shape == (3, 5, 6)  # PIL size is (W, H); arrays are C x H x W
    assert x.shape == (8, 3, 5, 6) and x.dtype == np.float32
    assert np.bincount(y).tolist() == [4, 4]
    for img, label in zip(x, y):
        r, g, b = (float(img[c, 0, 0]) * 255 for c in range(3))
        assert np.all(img == img[:, :1, :1])  # uniform images
        if label == 0:  # cat, grey: r = g = b in {0, 10, 20, 30}
            assert r == pytest.approx(g) == pytest.approx(b)
            assert round(r) in {0, 10, 20, 30}
        else:  # dog: channel order is R, G, B
            assert round(r) in {200, 210, 220, 230} and round(g) == 7 and round(r) + round(b) == 255


def test_imagefolder_grayscale_and_resize(tmp_path):
    write_images(tmp_path / "imgs")
    s, x, y = imagefolder_all(tmp_path, channels=1, image_size=4)
    assert s.input_shape == (1, 4, 4) and x.shape == (8, 1, 4, 4)
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert np.all(x[y == 0].max(axis=(1, 2, 3)) <= 30 / 255 + 1e-6)
    # dog in grey (ITU-R 601-2 luma, as PIL's convert("L")): 0.299 R + 0.587 G + 0.114 B
    #   = 0.299 (200 + 10 i) + 0.587 * 7 + 0.114 (55 - 10 i) = 70.18 + 1.85 i -> 70, 72, 74, 76
    dog = sorted(np.round(x[y == 1].mean(axis=(1, 2, 3)) * 255).tolist())
    assert dog == pytest.approx([70.18 + 1.85 * i for i in range(4)], abs=1)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="image folder not found"):
        load_data(DataConfig(source="imagefolder", path=tmp_path / "none"), seed=0)
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="one sub-folder per class; found none"):
        load_data(DataConfig(source="imagefolder", path=tmp_path / "flat"), seed=0)
    write_images(tmp_path / "imgs")
    from PIL import Image

    Image.new("L", (9, 9)).save(tmp_path / "imgs" / "cat" / "big.png")
    with pytest.raises(DataError, match="images differ in size.*set data.image_size"):
        load_data(DataConfig(source="imagefolder", path=tmp_path / "imgs"), seed=0)
    (tmp_path / "imgs" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png: unreadable image"):
        load_data(DataConfig(source="imagefolder", path=tmp_path / "imgs", image_size=8), seed=0)


def test_split_too_small_for_the_fractions_is_a_data_error(tmp_path):
    x, y = balanced(5, 3, (4,))
    cfg = DataConfig(source="npz", path=tmp_path / "small.npz", split={"val": 0.1, "test": 0.1})
    np.savez(cfg.path, x=x, y=y)
    try:
        s = load_data(cfg, seed=0)
    except DataError:
        return  # refused with a readable message: fine
    for part in (s.train, s.val, s.test):  # or every split holds every class
        assert sorted(np.unique(part.y).tolist()) == [0, 1, 2], s.describe()
