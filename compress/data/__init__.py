"""Datasets: built-in digits, npz arrays, image folders, byte snippets of text; a seeded train/val/test split.

Arrays are split per sample, stratified by class; text (``stdlib-text``, ``text``, see compress/data/text.py)
is split by file, so no test snippet comes from a file seen in training. The test split is never trained,
selected or calibrated on: stages see ``train`` (and ``val`` for model selection); only the report reads ``test``.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress.errors import DataError

__all__ = ["Dataset", "Rows", "Splits", "load_data", "peek_data", "split_rows", "stratified_split", "TEXT_SOURCES"]

TEXT_SOURCES = ("stdlib-text", "text")  # byte snippets, split by file


class Rows:
    """Rows ``index`` of a (memory-mapped) array, read on demand: slicing or fancy indexing returns an
    ndarray of just those rows, so a split of a large npz never sits in memory whole."""

    def __init__(self, base: np.ndarray, index: np.ndarray):
        self.base, self.index = base, np.asarray(index)
        self.shape = (len(self.index), *base.shape[1:])
        self.dtype, self.ndim = base.dtype, base.ndim

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key):
        idx = self.index[key] if isinstance(key, (slice, int, np.integer)) else self.index[np.asarray(key)]
        if np.ndim(idx) == 0:
            return np.asarray(self.base[int(idx)])
        order = np.argsort(idx, kind="stable")  # read the file forwards, then restore the asked order
        out = np.empty((len(idx), *self.base.shape[1:]), dtype=self.base.dtype)
        out[order] = self.base[idx[order]]
        return out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out.astype(dtype) if dtype is not None else out


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray | Rows  # float32, N x C x H x W or N x F (Rows when memory-mapped)
    y: np.ndarray  # int64 labels in [0, num_classes)

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]  # one sample, without the batch axis
    fingerprint: str  # hash of the data and the split, for cache keys

    def describe(self) -> str:
        return (f"{len(self.train)} train / {len(self.val)} val / {len(self.test)} test samples, "
                f"input {tuple(self.input_shape)}, {self.num_classes} classes")


def _digits() -> tuple[np.ndarray, np.ndarray]:
    # UCI optdigits test set as shipped by scikit-learn (BSD-3): 1797 8x8 images, pixel values 0..16.
    path = Path(__file__).with_name("digits.csv.gz")
    with gzip.open(path, "rt") as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x = (raw[:, :-1] / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    return x, raw[:, -1].astype(np.int64)


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    import zipfile

    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a readable npz file (not a zip archive; write it with numpy.savez)")
    mapped = _mmap_npz(path)
    if mapped is not None and mapped[0].dtype == np.float32:  # other dtypes are converted in memory below
        return mapped[0], _labels(np.asarray(mapped[1]), path)
    try:
        # allow_pickle=False: an npz with object arrays could run code on load.
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x", "y") if k not in z.files]
            if missing:
                raise DataError(f"{path}: npz must hold arrays 'x' and 'y'; missing {missing} (has {z.files})")
            x, y = z["x"], z["y"]
    except DataError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError (object arrays), OSError
        raise DataError(f"{path}: not a readable npz file ({exc})") from None
    return x.astype(np.float32, copy=False), _labels(y, path)


def _labels(y: np.ndarray, path: Path) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            return y.astype(np.int64)
        raise DataError(f"{path}: labels 'y' must be integers (got dtype {y.dtype})")
    return y.astype(np.int64)


def _mmap_npz(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """Memory-map ``x`` and ``y`` of an uncompressed npz (numpy.savez), or None when it is compressed.

    An npz is a zip of .npy files; a stored (uncompressed) member is the .npy bytes at an offset, so
    numpy.memmap can map it without reading it. np.load ignores mmap_mode for npz files.
    """
    import struct
    import zipfile

    out = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        names = set(zf.namelist())
        for key in ("x", "y"):
            if f"{key}.npy" not in names:
                return None
            info = zf.getinfo(f"{key}.npy")
            if info.compress_type != zipfile.ZIP_STORED:
                return None
            f.seek(info.header_offset)
            local = f.read(30)
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            if dtype.hasobject:
                raise DataError(f"{path}: {key} holds Python objects (pickles), which are refused")
            out[key] = np.memmap(path, dtype=dtype, mode="r", shape=shape, order="F" if fortran else "C", offset=f.tell())
    return out["x"], out["y"]


def _imagefolder(path: Path, size: int | None, channels: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image  # pillow comes with matplotlib

    if not path.is_dir():
        raise DataError(f"image folder not found: {path}")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{path}: an image folder holds one sub-folder per class; found none")
    xs, ys = [], []
    mode = "L" if channels == 1 else "RGB"
    for label, cls in enumerate(classes):
        for f in sorted((path / cls).iterdir()):
            if f.suffix.lower() not in {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}:
                continue
            try:
                img = Image.open(f).convert(mode)
            except Exception as exc:
                raise DataError(f"{f}: unreadable image ({exc})") from None
            if size:
                img = img.resize((size, size), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
            xs.append(arr[None] if channels == 1 else arr.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise DataError(f"{path}: no images found in {classes}")
    shapes = {a.shape for a in xs}
    if len(shapes) > 1:
        raise DataError(f"{path}: images differ in size {sorted(shapes)[:3]}; set data.image_size")
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def _text(cfg):
    from compress.data.text import folder_files, read_text, stdlib_files

    classes, files = stdlib_files() if cfg.source == "stdlib-text" else folder_files(Path(cfg.path))
    return read_text(classes, files, cfg.length, cfg.snippets_per_class, _where(cfg))


def _read(cfg) -> tuple[np.ndarray, np.ndarray]:
    if cfg.source in TEXT_SOURCES:
        corpus = _text(cfg)
        return corpus.x, corpus.y
    if cfg.source == "digits":
        return _digits()
    if cfg.source == "npz":
        return _npz(Path(cfg.path))
    return _imagefolder(Path(cfg.path), cfg.image_size, cfg.channels)


def _check(x: np.ndarray, y: np.ndarray, where: str) -> int:
    if len(x) == 0:
        raise DataError(f"{where}: the dataset is empty")
    if y.ndim != 1:
        raise DataError(f"{where}: labels y must be a 1-d array of class ids (got shape {y.shape})")
    if len(x) != len(y):
        raise DataError(f"{where}: x has {len(x)} samples but y has {len(y)}")
    if x.ndim not in (2, 4):
        raise DataError(f"{where}: x must be N x F or N x C x H x W (got shape {x.shape})")
    bad = sum(int((~np.isfinite(c)).any(axis=tuple(range(1, x.ndim))).sum()) for c in _chunks(x))
    if bad:
        raise DataError(f"{where}: x has NaN or inf values in {bad} samples")
    if y.min() < 0:
        raise DataError(f"{where}: labels must be >= 0 (found {int(y.min())})")
    classes = np.unique(y)
    if len(classes) < 2:
        raise DataError(f"{where}: a classifier needs at least 2 classes (found only {classes.tolist()})")
    num_classes = int(y.max()) + 1
    if len(classes) != num_classes:
        missing = sorted(set(range(num_classes)) - set(classes.tolist()))
        raise DataError(f"{where}: labels must be 0..{num_classes - 1} with every class present; missing {missing[:10]}")
    return num_classes


def _chunks(x, rows: int = 4096):
    """Blocks of rows: a memory-mapped array is checked and hashed without being read into memory whole."""
    for i in range(0, len(x), rows):
        yield np.asarray(x[i:i + rows])


def stratified_split(y: np.ndarray, val: float, test: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train/val/test with each class split in the same proportions (seeded)."""
    rng = np.random.default_rng(seed)
    tr, va, te = [], [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_te, n_va = int(round(len(idx) * test)), int(round(len(idx) * val))
        te.append(idx[:n_te]), va.append(idx[n_te:n_te + n_va]), tr.append(idx[n_te + n_va:])
    return tuple(np.sort(np.concatenate(p)) for p in (tr, va, te))  # type: ignore[return-value]


def peek_data(cfg) -> tuple[tuple[int, ...], int]:
    """Input shape and class count, for checks before compute (reads the data, trains nothing)."""
    x, y = _read(cfg)
    return tuple(x.shape[1:]), _check(x, y, _where(cfg))


def _where(cfg) -> str:
    return f"data ({cfg.source})" if cfg.path is None else f"data ({cfg.path})"


def split_rows(cfg, seed: int, x=None, y=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, train, val, test)``: the data and the row indices of each split (text by file, arrays stratified)."""
    if cfg.source in TEXT_SOURCES:
        from compress.data.text import split_files

        corpus = _text(cfg)
        _check(corpus.x, corpus.y, _where(cfg))
        return (corpus.x, corpus.y, *split_files(corpus, cfg.split.val, cfg.split.test, seed, _where(cfg)))
    x, y = _read(cfg) if x is None else (x, y)
    num_classes = _check(x, y, _where(cfg))
    counts = np.bincount(y, minlength=num_classes)
    need = max(3, int(np.ceil(1 / min(cfg.split.val, cfg.split.test))))
    if counts.min() < 3:
        raise DataError(f"{_where(cfg)}: class {int(counts.argmin())} has {int(counts.min())} samples; "
                        f"a train/val/test split needs at least 3 per class ({need} for this split)")
    return (x, y, *stratified_split(y, cfg.split.val, cfg.split.test, seed))


def load_data(cfg, seed: int) -> Splits:
    """Load and split; the split depends on the seed only, so every model of a run sees the same test set."""
    x, y, tr, va, te = split_rows(cfg, seed)
    num_classes = int(y.max()) + 1
    for part, idx in (("val", va), ("test", te), ("train", tr)):
        if len(idx) == 0:
            raise DataError(f"{_where(cfg)}: the {part} split is empty ({len(y)} samples, split val={cfg.split.val}, "
                            f"test={cfg.split.test}); use more data or larger split fractions")
    h = hashlib.sha256()
    for block in _chunks(x):
        h.update(np.ascontiguousarray(block).tobytes())
    for a in (y, tr, va, te):
        h.update(np.ascontiguousarray(a).tobytes())
    rows = (lambda idx: Rows(x, idx)) if isinstance(x, np.memmap) else (lambda idx: x[idx])
    return Splits(Dataset(rows(tr), y[tr]), Dataset(rows(va), y[va]), Dataset(rows(te), y[te]),
                  num_classes, tuple(x.shape[1:]), h.hexdigest()[:16])
