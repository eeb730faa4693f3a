"""Text classification data (compress/data/text.py): stdlib-text and text folders, split by file."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import pytest

from compress.data import load_data, peek_data
from compress.data.text import STDLIB_CLASSES, read_text, snippets, split_files, stdlib_files
from compress.errors import DataError
from compress.recipe import DataConfig

SMALL = {"source": "stdlib-text", "length": 64, "snippets_per_class": 120}


@pytest.fixture(scope="module")
def corpus():
    classes, files = stdlib_files()
    return read_text(classes, files, 64, 120, "data (stdlib-text)")


def test_snippets_are_evenly_spaced_non_overlapping_windows():
    data = bytes(range(100))  # 10 windows of 10 bytes: 0-9, 10-19, ..., 90-99
    got = snippets(data, 10, 4)
    assert got.dtype == np.uint8 and got.shape == (4, 10)
    assert got[:, 0].tolist() == [0, 30, 60, 90]  # windows 0, 3, 6, 9 (linspace over 0..9, rounded)
    np.testing.assert_array_equal(got[1], np.arange(30, 40))
    assert snippets(data, 10, 50).shape == (10, 10)  # cap above the window count: every window once
    assert snippets(data[:9], 10, 4).shape == (0, 10)  # shorter than one window: none
    assert snippets(data, 10, 1)[:, 0].tolist() == [0]


def test_every_class_is_a_stdlib_package_without_its_tests(corpus):
    classes, files = stdlib_files()
    root = Path(sysconfig.get_paths()["stdlib"])
    assert classes == list(STDLIB_CLASSES) and len(classes) == 8
    for cls, paths in zip(classes, files):
        assert len(paths) >= 9, cls
        assert all(p.suffix == ".py" and p.is_relative_to(root / cls) for p in paths)
        assert not any({"test", "tests"} & set(p.relative_to(root / cls).parts) for p in paths)
    assert corpus.classes == classes


def test_rows_are_the_files_bytes_as_floats(corpus):
    assert corpus.x.dtype == np.float32 and corpus.x.shape[1] == 64
    assert corpus.x.min() >= 0 and corpus.x.max() <= 255
    np.testing.assert_array_equal(corpus.x, np.round(corpus.x))
    root = Path(sysconfig.get_paths()["stdlib"])
    row = int(np.flatnonzero(corpus.file == 0)[0])  # first snippet of the first file = its first 64 bytes
    assert bytes(corpus.x[row].astype(np.uint8)) == (root / corpus.files[0]).read_bytes()[:64]


def test_classes_are_balanced_and_files_capped(corpus):
    counts = np.bincount(corpus.y, minlength=8)
    assert counts.max() / counts.min() < 2.0, counts  # ctypes has 9 files, encodings 122
    assert counts.min() >= 80
    per_file = np.bincount(corpus.file)
    for label, n_files in enumerate(np.bincount(corpus.file_class)):
        # every file of a class is capped at ceil(120 / files): a big file cannot dominate
        cap = int(np.ceil(120 / n_files))
        assert per_file[corpus.file_class == label].max() <= cap


def test_split_is_by_file(corpus):
    tr, va, te = split_files(corpus, 0.2, 0.2, seed=0, where="x")
    assert len(tr) + len(va) + len(te) == len(corpus.y)
    assert len(np.intersect1d(tr, va)) == len(np.intersect1d(tr, te)) == len(np.intersect1d(va, te)) == 0
    files = [set(corpus.file[idx].tolist()) for idx in (tr, va, te)]
    assert not files[0] & files[1] and not files[0] & files[2] and not files[1] & files[2]
    for idx in (tr, va, te):
        assert sorted(set(corpus.y[idx].tolist())) == list(range(8))  # every class in every split
    # about a fifth of each class's files in test (at least one)
    for label in range(8):
        n = int((corpus.file_class == label).sum())
        n_test = len({f for f in files[2] if corpus.file_class[f] == label})
        assert n_test == max(1, round(n * 0.2))


def test_load_data_uses_the_file_split_and_is_deterministic(corpus):
    cfg = DataConfig(**SMALL)
    a, b, other = load_data(cfg, seed=0), load_data(cfg, seed=0), load_data(cfg, seed=1)
    tr, va, te = split_files(corpus, 0.2, 0.2, seed=0, where="x")
    np.testing.assert_array_equal(a.test.x, corpus.x[te])
    np.testing.assert_array_equal(a.train.y, corpus.y[tr])
    assert a.fingerprint == b.fingerprint and a.fingerprint != other.fingerprint
    assert a.input_shape == (64,) and a.num_classes == 8
    assert peek_data(cfg) == ((64,), 8)
    # a different snippet length is different data: a different fingerprint (cache key)
    assert load_data(DataConfig(**{**SMALL, "length": 32}), seed=0).fingerprint != a.fingerprint


def test_missing_stdlib_package_is_named(tmp_path):
    for cls in STDLIB_CLASSES[1:]:
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "__init__.py").write_text("")
    with pytest.raises(DataError) as err:
        stdlib_files(tmp_path)
    assert str(err.value) == (f"source 'stdlib-text': the standard library at {tmp_path} lacks the package(s) asyncio "
                              f"(needs {', '.join(STDLIB_CLASSES)}); use source 'text' with your own class folders")


# --- text: a folder of class folders --------------------------------------------------------------


def make_folder(root: Path, files: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for cls, n in files.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            letters = rng.choice(list(b"abc" if cls == "abc" else b"xyz"), size=100).astype(np.uint8)
            (root / cls / f"{i}.txt").write_bytes(letters.tobytes())
    return root


def test_text_folder(tmp_path):
    root = make_folder(tmp_path / "corpus", {"abc": 5, "xyz": 4})
    (root / "abc" / "notes.md").write_text("not a .txt file: ignored")
    s = load_data(DataConfig(source="text", path=root, length=20, snippets_per_class=10), seed=0)
    assert s.num_classes == 2 and s.input_shape == (20,)
    # 5 files of class abc, cap ceil(10 / 5) = 2 snippets each; xyz: 4 files, cap 3
    assert len(s.train) + len(s.val) + len(s.test) == 5 * 2 + 4 * 3
    abc = s.train.x[s.train.y == 0]
    assert set(np.unique(abc).tolist()) <= {ord("a"), ord("b"), ord("c")}


def test_text_folder_errors(tmp_path):
    root = make_folder(tmp_path / "few", {"abc": 5, "xyz": 2})
    with pytest.raises(DataError) as err:
        load_data(DataConfig(source="text", path=root, length=20), seed=0)
    assert str(err.value) == (f"data ({root}): class 'xyz' has 2 file(s) of at least 20 bytes; "
                              "a train/val/test split by file needs at least 3 per class")
    with pytest.raises(DataError, match="text folder not found"):
        load_data(DataConfig(source="text", path=tmp_path / "nope"), seed=0)
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="one sub-folder of .txt files per class; found none"):
        load_data(DataConfig(source="text", path=tmp_path / "flat"), seed=0)


def test_too_few_files_for_the_split_fractions(tmp_path):
    root = make_folder(tmp_path / "c", {"abc": 4, "xyz": 4})
    with pytest.raises(DataError) as err:
        load_data(DataConfig(source="text", path=root, length=20, split={"val": 0.4, "test": 0.4}), seed=0)
    assert str(err.value) == (f"data ({root}): class 'abc' has 4 files; val (2) and test (2) files leave none for "
                              "training; use more files or smaller split fractions")
