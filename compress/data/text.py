"""Text classification data: fixed-length byte snippets of documents, labelled by the document's class.

``stdlib-text`` is built in and offline: the source files of eight top-level packages of the running
interpreter's standard library (found like the LM corpus, compress/lm/data.py), labelled by package.
``text`` reads a folder with one sub-folder of ``.txt`` files per class.

Documents (files), not snippets, are split into train/val/test, per class, by a seeded permutation:
no test snippet comes from a file that any stage trained, selected or calibrated on. Each class gets
about ``snippets_per_class`` snippets, spread evenly over its files (every file of a class the same
cap), so a large file does not dominate its class and a class with many files does not dominate the data.
Snippets are ``x`` rows of float32 byte values (0..255), so every stage that reads float inputs works.
"""

from __future__ import annotations

import itertools
import math
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress._limits import regular_file
from compress.errors import DataError

__all__ = ["STDLIB_CLASSES", "TextCorpus", "stdlib_files", "folder_files", "snippets", "split_files", "read_text"]

# Top-level packages present in every CPython >= 3.11 (none was removed by 3.13, none is an optional
# distro package like tkinter or idlelib), each with >= 9 source files outside its test folders.
STDLIB_CLASSES = ("asyncio", "ctypes", "email", "encodings", "importlib", "multiprocessing", "unittest", "xml")
_SKIP_DIRS = {"test", "tests", "idle_test", "__pycache__"}  # test suites are split off by some distros


@dataclass(frozen=True)
class TextCorpus:
    """Every snippet of a corpus: ``x`` (N x length, float32 bytes), ``y`` (class ids), ``file`` (row -> index
    into ``files``); ``file_class`` is each file's class id."""

    x: np.ndarray
    y: np.ndarray
    file: np.ndarray
    files: list[str]
    file_class: np.ndarray
    classes: list[str]


def stdlib_files(root: Path | None = None) -> tuple[list[str], list[list[Path]]]:
    """The ``.py`` files of each package in STDLIB_CLASSES (sorted; test folders left out)."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    missing = [c for c in STDLIB_CLASSES if not (root / c / "__init__.py").is_file()]
    if missing:
        raise DataError(f"source 'stdlib-text': the standard library at {root} lacks the package(s) {', '.join(missing)} "
                        f"(needs {', '.join(STDLIB_CLASSES)}); use source 'text' with your own class folders")
    files = [sorted(p for p in (root / c).rglob("*.py")
                    if p.is_file() and not _SKIP_DIRS & set(p.relative_to(root / c).parts[:-1]))
             for c in STDLIB_CLASSES]
    return list(STDLIB_CLASSES), files


def folder_files(path: Path) -> tuple[list[str], list[list[Path]]]:
    """``path/<class>/**/*.txt``: class names (sorted sub-folders) and their files."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"text folder not found: {path}")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{path}: a text folder holds one sub-folder of .txt files per class; found none")
    files = [sorted(p for p in (path / c).rglob("*.txt") if not p.is_dir()) for c in classes]
    for p in itertools.chain.from_iterable(files):  # before any is read: a FIFO would block, a device never end
        regular_file(p, f"data ({path}): {p.relative_to(path)}")
    return classes, files


def snippets(data: bytes, length: int, cap: int) -> np.ndarray:
    """Up to ``cap`` non-overlapping ``length``-byte windows, evenly spaced over ``data`` (uint8, k x length).

    A file shorter than ``length`` gives none. Evenly spaced (not the first ``cap``): a source file's
    header (licence, imports) would otherwise stand for the whole file.
    """
    n = len(data) // length  # n == 0 or cap < 1: no pick, a 0 x length array
    pick = np.unique(np.linspace(0, n - 1, min(n, cap)).round().astype(np.int64))
    buf = np.frombuffer(data[:n * length], dtype=np.uint8).reshape(n, length)
    return buf[pick]


def read_text(classes: list[str], files: list[list[Path]], length: int, snippets_per_class: int, where: str) -> TextCorpus:
    """Snippets of every file; each class's files share a per-file cap of ``ceil(snippets_per_class / files)``."""
    xs, fs, names, file_class = [], [], [], []
    for label, (cls, paths) in enumerate(zip(classes, files)):
        usable = [(p, data) for p in paths if len(data := p.read_bytes()) >= length]
        if len(usable) < 3:
            raise DataError(f"{where}: class '{cls}' has {len(usable)} file(s) of at least {length} bytes; a train/val/test "
                            "split by file needs at least 3 per class")
        cap = math.ceil(snippets_per_class / len(usable))
        for p, data in usable:
            rows = snippets(data, length, cap)
            xs.append(rows)
            fs.append(np.full(len(rows), len(names), np.int64))
            names.append(f"{cls}/{p.name}" if p.parent.name == cls else f"{cls}/{p.parent.name}/{p.name}")
            file_class.append(label)
    file, file_class = np.concatenate(fs), np.asarray(file_class, np.int64)
    return TextCorpus(np.concatenate(xs).astype(np.float32), file_class[file], file, names, file_class, list(classes))


def split_files(corpus: TextCorpus, val: float, test: float, seed: int, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of train/val/test: each class's files are permuted (seeded) and cut val/test/train,
    at least one file per class in each split; all snippets of a file go to its file's split."""
    rng = np.random.default_rng(seed)
    part = np.empty(len(corpus.files), np.int64)  # 0 train, 1 val, 2 test
    for label, cls in enumerate(corpus.classes):
        ids = rng.permutation(np.flatnonzero(corpus.file_class == label))
        n_te, n_va = max(1, round(len(ids) * test)), max(1, round(len(ids) * val))
        if n_te + n_va >= len(ids):
            raise DataError(f"{where}: class '{cls}' has {len(ids)} files; val ({n_va}) and test ({n_te}) files leave none "
                            "for training; use more files or smaller split fractions")
        part[ids[:n_te]], part[ids[n_te:n_te + n_va]], part[ids[n_te + n_va:]] = 2, 1, 0
    row_part = part[corpus.file]
    return tuple(np.flatnonzero(row_part == k) for k in (0, 1, 2))  # type: ignore[return-value]
