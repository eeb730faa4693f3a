"""Datasets: built-in digits and MNIST-1D, npz arrays, image folders, byte snippets of text; a seeded train/val/test split.

Arrays are split per sample, stratified by class; text (``stdlib-text``, ``text``, see compress/data/text.py)
is split by file, so no test snippet comes from a file seen in training. The test split is never trained,
selected or calibrated on: stages see ``train`` (and ``val`` for model selection); only the report reads ``test``.

Pixels are scaled to [0, 1] (image folders x/255, digits x/16; npz arrays are used as stored), then, with
``data.normalize``, normalised per channel, ``(x - mean[c]) / std[c]``, once, here: training, calibration, model
selection and measurement all see the same values (compress/preprocess.py describes them for the app).
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import re
import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compress._limits import (MAX_COMPRESSION_RATIO, MAX_IMAGE_FOLDER_BYTES, MAX_IMAGE_PIXELS, MAX_NPY_BYTES,
                              RATIO_CHECKED_FROM_BYTES, fmt_bytes, regular_file)
from compress.errors import DataError

__all__ = ["Dataset", "Rows", "Splits", "load_data", "class_names", "peek_data", "split_rows", "stratified_split", "read_arrays", "TEXT_SOURCES"]

TEXT_SOURCES = ("stdlib-text", "text")  # byte snippets, split by file


class Rows:
    """Rows ``index`` of a (memory-mapped) array, read on demand: slicing or fancy indexing returns an
    ndarray of just those rows, so a split of a large npz never sits in memory whole."""

    def __init__(self, base: np.ndarray, index: np.ndarray, transform=None):
        self.base, self.index, self.transform = base, np.asarray(index), transform  # transform: rows -> rows (normalize)
        self.shape = (len(self.index), *base.shape[1:])
        self.dtype, self.ndim = base.dtype, base.ndim

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key):
        idx = self.index[key] if isinstance(key, (slice, int, np.integer)) else self.index[np.asarray(key)]
        if np.ndim(idx) == 0:
            row = np.asarray(self.base[int(idx)])
            return row if self.transform is None else self.transform(row[None])[0]
        order = np.argsort(idx, kind="stable")  # read the file forwards, then restore the asked order
        out = np.empty((len(idx), *self.base.shape[1:]), dtype=self.base.dtype)
        out[order] = self.base[idx[order]]
        return out if self.transform is None else self.transform(out)

    def __array__(self, dtype=None, copy=None):
        return self[:] if dtype is None else self[:].astype(dtype)


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray | Rows  # float32, N x C x H x W, N x C x L or N x F (Rows when memory-mapped)
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
    class_names: tuple[str, ...]  # one per class, in label (= output) order: ``class_names(cfg, num_classes)``

    def describe(self) -> str:
        return (f"{len(self.train)} train / {len(self.val)} val / {len(self.test)} test samples, "
                f"input {tuple(self.input_shape)}, {self.num_classes} classes")


def _digits(size: int | None = None, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """UCI optdigits test set as shipped by scikit-learn (BSD-3): 1797 8x8 images, pixel values 0..16, scaled to
    [0, 1] (x/16); ``size``: resized (bilinear, like an image folder); ``channels`` 3: the grey channel repeated."""
    path = Path(__file__).with_name("digits.csv.gz")
    with gzip.open(path, "rt") as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x = (raw[:, :-1] / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    if size and size != 8:
        _decoded_budget("data (digits)", len(x), (channels, size, size), ": set a smaller data.image_size")
        from PIL import Image

        x = np.stack([np.asarray(Image.fromarray(img[0]).resize((size, size), Image.BILINEAR))
                      for img in x])[:, None].astype(np.float32)
    if channels == 3:
        x = np.repeat(x, 3, axis=1)
    return np.ascontiguousarray(x), raw[:, -1].astype(np.int64)


def _existing(path: Path, what: str) -> None:
    if not path.exists() and not path.is_symlink():
        raise DataError(f"{what} not found: {path}")
    regular_file(path)  # a FIFO would block, a device never end


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    _existing(path, "data file")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a readable npz file (not a zip archive; write it with numpy.savez)")
    members = _npz_members(path)  # every header checked before anything is mapped or decompressed
    if all(m.stored for m in members.values()) and members["x"].dtype == np.float32:
        x, y = (np.memmap(path, dtype=m.dtype, mode="r", shape=m.shape, order="F" if m.fortran else "C",
                          offset=m.offset) for m in (members["x"], members["y"]))
        return x, _labels(np.asarray(y), path)  # other dtypes are converted in memory below
    arrays = _load_npz(path, members)
    return arrays["x"].astype(np.float32, copy=False), _labels(arrays["y"], path)


def _load_npz(path: Path, members) -> dict[str, np.ndarray]:
    """The arrays ``members`` (validated by ``_npz_members``) of an npz, read into memory."""
    try:
        # allow_pickle=False: an npz with object arrays could run code on load.
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in members}
    except Exception as exc:  # zipfile.BadZipFile (CRC), ValueError, OSError
        raise DataError(f"{path}: not a readable npz file ({exc})") from None


def _labels(y: np.ndarray, path: Path) -> np.ndarray:
    integral = np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0)
    if not (np.issubdtype(y.dtype, np.integer) or integral):
        raise DataError(f"{path}: labels 'y' must be integers (got dtype {y.dtype})")
    return y.astype(np.int64)


@dataclass(frozen=True)
class _Member:
    """One array of an npz, from its zip entry and .npy header; nothing of its data read."""

    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype
    stored: bool  # uncompressed: mappable at ``offset``
    offset: int  # of the data in the npz file (stored members only)


_ZIP_METHODS = {0: "stored", 8: "deflate", 12: "bzip2", 14: "lzma"}


def _npz_members(path: Path, keys: tuple[str, ...] = ("x", "y"), optional: tuple[str, ...] = ()) -> dict[str, _Member]:
    """Arrays ``keys`` (and ``optional`` ones when present; default ``x`` and ``y``) of an npz, validated from the
    zip directory and each .npy header before any data is read.

    An npz is a zip of .npy files; each header is checked by ``_check_array`` against its member's size in the zip.
    A compressed member must be deflated (numpy.savez_compressed: zipfile bounds what each read inflates) and, from
    RATIO_CHECKED_FROM_BYTES up, compress at most MAX_COMPRESSION_RATIO : 1; anything else may be a zip bomb,
    refused before anything would decompress it.
    """
    out = {}
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable npz file ({exc})") from None
    with zf, open(path, "rb") as f:
        names = zf.namelist()
        missing = [k for k in keys if f"{k}.npy" not in names]
        if missing:
            has = [n.removesuffix(".npy") for n in names]
            want = " and ".join(f"'{k}'" for k in keys)
            raise DataError(f"{path}: npz must hold {'arrays' if len(keys) > 1 else 'an array'} {want}; missing {missing} (has {has})")
        file_bytes = f.seek(0, 2)
        for key in keys + tuple(k for k in optional if f"{k}.npy" in names):
            member = f"{key}.npy"
            info = zf.getinfo(member)
            where = f"{path}: {member}"
            # From the zip directory alone, before the member is opened: zipfile inflates deflate in bounded
            # steps, but bzip2 and lzma a whole compressed read at once (a few KB of bzip2 can be gigabytes).
            stored = info.compress_type == zipfile.ZIP_STORED
            if not stored:
                ratio = info.file_size / max(info.compress_size, 1)
                if info.file_size > RATIO_CHECKED_FROM_BYTES and ratio > MAX_COMPRESSION_RATIO:
                    raise DataError(f"{where}: {fmt_bytes(info.compress_size)} would decompress to "
                                    f"{fmt_bytes(info.file_size)} ({ratio:,.0f} : 1; real data compresses at most "
                                    f"{MAX_COMPRESSION_RATIO} : 1); refused as a zip bomb before decompressing it")
                if info.compress_type != zipfile.ZIP_DEFLATED:
                    method = _ZIP_METHODS.get(info.compress_type, f"method {info.compress_type}")
                    raise DataError(f"{where}: compressed with {method}; an npz member is stored (numpy.savez) or "
                                    "deflated (numpy.savez_compressed), and nothing else is decompressed")
            try:
                with zf.open(info) as m:  # reads (and inflates) only the header's first bytes
                    shape, fortran, dtype, header = _npy_header(m)
            except Exception as exc:  # ValueError (bad header), BadZipFile, zlib.error, NotImplementedError
                raise DataError(f"{where}: not a valid .npy array header ({exc})") from None
            if dtype.hasobject:
                raise DataError(f"{path}: {key} holds Python objects (pickles), which are refused (member {member})")
            declared = _check_array(where, shape, dtype, info.file_size - header, "member",
                                    " (write it with numpy.savez)")
            offset = 0
            if stored:
                f.seek(info.header_offset)
                name_len, extra_len = struct.unpack("<HH", f.read(30)[26:30])  # the member's local header
                offset = info.header_offset + 30 + name_len + extra_len + header
                if offset + declared > file_bytes:
                    raise DataError(f"{where}: the data runs past the end of the file ({offset + declared:,} > "
                                    f"{file_bytes:,} bytes); the file is truncated")
            out[key] = _Member(tuple(shape), fortran, dtype, stored, offset)
    return out


def read_arrays(path: Path, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Numeric arrays from an ``.npz`` (``keys``, and ``optional`` ones when present) or an ``.npy`` file (its one
    array under ``keys[0]``), headers validated as for the data: for teacher logits and ``compress bench --data``."""
    path = Path(path)
    _existing(path, "file")
    if zipfile.is_zipfile(path):
        return _load_npz(path, _npz_members(path, keys, optional))
    try:
        with open(path, "rb") as f:
            shape, _, dtype, header = _npy_header(f)
            size = f.seek(0, 2)
    except Exception as exc:  # noqa: BLE001 - ValueError for a bad magic or header
        raise DataError(f"{path}: not a valid .npy file ({exc})") from None
    _check_array(str(path), shape, dtype, size - header, "file")
    try:
        return {keys[0]: np.load(path, allow_pickle=False, mmap_mode="r")}
    except Exception as exc:  # noqa: BLE001 - numpy raises ValueError/OSError for a bad file
        raise DataError(f"{path}: not a readable .npy or .npz file ({exc})") from None


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran, dtype, header bytes)`` of the .npy stream ``f``, reading only its header."""
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise ValueError(f"unknown .npy format version {version}")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return (*read(f), f.tell())


def _check_array(where: str, shape, dtype: np.dtype, holds: int, what: str, hint: str = "") -> int:
    """The bytes an array header declares: a numeric dtype, within MAX_NPY_BYTES, and exactly the ``holds`` bytes
    stored, so a header cannot claim more rows than the file holds."""
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise DataError(f"{where}: dtype {dtype} is not numeric; arrays must be bool, integer or float")
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > MAX_NPY_BYTES:
        raise DataError(f"{where}: the header declares shape {shape} of {dtype}, {fmt_bytes(declared)}; the limit is "
                        f"{fmt_bytes(MAX_NPY_BYTES)} per array")
    if declared != holds:
        raise DataError(f"{where}: the header declares shape {shape} of {dtype} ({declared:,} bytes), but the {what} "
                        f"holds {max(holds, 0):,} bytes of data; the file is corrupt or forged{hint}")
    return declared


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def _imagefolder(path: Path, size: int | None, channels: int, order: str = "rgb") -> tuple[np.ndarray, np.ndarray]:
    """Every image of ``path/<class>/``: headers first (regular files, pixel and memory budgets, one size), then
    decoding into one preallocated float32 array, channels in ``order`` (rgb or bgr)."""
    from PIL import Image  # pillow comes with matplotlib

    if not path.is_dir():
        raise DataError(f"image folder not found: {path}")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{path}: an image folder holds one sub-folder per class; found none")
    where = f"data ({path})"
    found = []  # (file, label, (channels, H, W) of its array)
    for label, cls in enumerate(classes):
        for f in sorted((path / cls).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES or f.is_dir():
                continue
            regular_file(f, f"{where}: {cls}/{f.name}")  # before opening: a FIFO would block
            w, h = _image_size(f, f"{where}: {cls}/{f.name}")
            found.append((f, label, (channels, size, size) if size else (channels, h, w)))
    if not found:
        raise DataError(f"{path}: no images found in {classes}")
    shapes = {s for _, _, s in found}
    if len(shapes) > 1:
        raise DataError(f"{path}: images differ in size {sorted(shapes)[:3]}; set data.image_size")
    shape = shapes.pop()
    _decoded_budget(where, len(found), shape, " (an image folder is loaded into memory whole): set a smaller "
                    "data.image_size, or save the data as an uncompressed npz (numpy.savez), which is memory-mapped")
    x = np.empty((len(found), *shape), dtype=np.float32)
    mode = "L" if channels == 1 else "RGB"
    for i, (f, _, _) in enumerate(found):
        try:  # no DecompressionBombWarning: _image_size refused more than MAX_IMAGE_PIXELS, below PIL's 89 Mpx
            with Image.open(f) as im:
                img = im.convert(mode)
        except Exception as exc:
            raise DataError(f"{f}: unreadable image ({exc})") from None
        if size:
            img = img.resize((size, size), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        if arr.shape[:2] != shape[1:]:
            raise DataError(f"{f}: decoded to {arr.shape[1]} x {arr.shape[0]} pixels, but its header said "
                            f"{shape[2]} x {shape[1]}")
        x[i] = arr[None] if channels == 1 else arr.transpose(2, 0, 1)[::-1 if order == "bgr" else 1]
    return x, np.asarray([label for _, label, _ in found], dtype=np.int64)


def _decoded_budget(where: str, n: int, shape: tuple[int, int, int], hint: str) -> None:
    """``n`` images of ``shape`` (C x H x W) as float32 within MAX_IMAGE_FOLDER_BYTES, checked before any is decoded."""
    total = n * int(np.prod(shape)) * 4
    if total > MAX_IMAGE_FOLDER_BYTES:
        raise DataError(f"{where}: {n} images of {shape[2]} x {shape[1]} x {shape[0]} channels decode to "
                        f"{fmt_bytes(total)} of float32; the limit is {fmt_bytes(MAX_IMAGE_FOLDER_BYTES)}{hint}")


def _image_size(f: Path, name: str) -> tuple[int, int]:
    """Width and height from the image's header (PIL's ``Image.open`` decodes nothing), within MAX_IMAGE_PIXELS."""
    from PIL import Image

    limit = f"the limit is {MAX_IMAGE_PIXELS:,} pixels (8192 x 8192) per image, checked before decoding"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(f) as im:
                w, h = im.size
    except Image.DecompressionBombError as exc:  # PIL's own refusal, above 2 x its MAX_IMAGE_PIXELS
        n = re.search(r"\((\d+) pixels\)", str(exc))
        raise DataError(f"{name} has {int(n.group(1)):,} pixels; {limit}" if n else f"{name}: {exc}; {limit}") from None
    except Exception as exc:
        raise DataError(f"{f}: unreadable image ({exc})") from None
    if w * h > MAX_IMAGE_PIXELS:
        raise DataError(f"{name} is {w} x {h} = {w * h:,} pixels; {limit}")
    return w, h


def _text(cfg):
    from compress.data.text import folder_files, read_text, stdlib_files

    classes, files = stdlib_files() if cfg.source == "stdlib-text" else folder_files(Path(cfg.path))
    return read_text(classes, files, cfg.length, cfg.snippets_per_class, _where(cfg))


def _read(cfg) -> tuple[np.ndarray, np.ndarray]:
    if cfg.source in TEXT_SOURCES:
        corpus = _text(cfg)
        return corpus.x, corpus.y
    if cfg.source == "digits":
        return _digits(cfg.image_size, cfg.channels or 1)
    if cfg.source == "mnist1d":
        from compress.data.mnist1d import mnist1d

        return mnist1d()
    if cfg.source == "npz":
        return _npz(Path(cfg.path))
    return _imagefolder(Path(cfg.path), cfg.image_size, cfg.channels or 3, cfg.channel_order or "rgb")


SIGNAL_SOURCES = ("mnist1d",)  # built-in 1-D signals, N x C x L (an npz still has to be N x F or N x C x H x W)


def _check(x: np.ndarray, y: np.ndarray, cfg) -> int:
    where = _where(cfg)
    if len(x) == 0:
        raise DataError(f"{where}: the dataset is empty")
    if y.ndim != 1:
        raise DataError(f"{where}: labels y must be a 1-d array of class ids (got shape {y.shape})")
    if len(x) != len(y):
        raise DataError(f"{where}: x has {len(x)} samples but y has {len(y)}")
    if x.ndim not in ((2, 3, 4) if cfg.source in SIGNAL_SOURCES else (2, 4)):
        raise DataError(f"{where}: x must be N x F or N x C x H x W (got shape {x.shape})")
    bad = sum(int((~np.isfinite(c)).any(axis=tuple(range(1, x.ndim))).sum()) for c in _chunks(x))
    if bad:
        raise DataError(f"{where}: x has NaN or inf values in {bad} samples")
    if y.min() < 0:
        raise DataError(f"{where}: labels must be >= 0 (found {int(y.min())})")
    classes = np.unique(y)  # sorted; as large as y at most, whatever the labels' values
    if len(classes) < 2:
        raise DataError(f"{where}: a classifier needs at least 2 classes (found only {classes.tolist()})")
    num_classes = int(classes[-1]) + 1
    if len(classes) != num_classes:
        gone = num_classes - len(classes)
        more = f" and {gone - 10:,} more" if gone > 10 else ""
        raise DataError(f"{where}: labels must be 0..{num_classes - 1} with every class present; "
                        f"missing {_missing(classes, 10)}{more}")
    return num_classes


def _missing(classes: np.ndarray, k: int) -> list[int]:
    """The first ``k`` integers of 0..classes[-1] absent from ``classes`` (sorted, unique, >= 0), read off the gaps
    between consecutive labels: never ``range(max label)``, which a label of 10**9 would make a billion long."""
    out: list[int] = []
    prev = np.concatenate([[-1], classes[:-1]])
    for i in np.flatnonzero(classes - prev > 1):
        start, stop = int(prev[i]) + 1, int(classes[i])
        out.extend(range(start, min(stop, start + k - len(out))))
        if len(out) >= k:
            break
    return out


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
    return tuple(x.shape[1:]), _check(x, y, cfg)


def _where(cfg) -> str:
    return f"data ({cfg.source})" if cfg.path is None else f"data ({cfg.path})"


def split_rows(cfg, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, train, val, test)``: the data and the row indices of each split (text by file, arrays stratified)."""
    if cfg.source in TEXT_SOURCES:
        from compress.data.text import split_files

        corpus = _text(cfg)
        _check(corpus.x, corpus.y, cfg)
        return (corpus.x, corpus.y, *split_files(corpus, cfg.split.val, cfg.split.test, seed, _where(cfg)))
    x, y = _read(cfg)
    num_classes = _check(x, y, cfg)
    counts = np.bincount(y, minlength=num_classes)
    need = max(3, int(np.ceil(1 / min(cfg.split.val, cfg.split.test))))
    if counts.min() < 3:
        raise DataError(f"{_where(cfg)}: class {int(counts.argmin())} has {int(counts.min())} samples; "
                        f"a train/val/test split needs at least 3 per class ({need} for this split)")
    return (x, y, *stratified_split(y, cfg.split.val, cfg.split.test, seed))


def class_names(cfg, num_classes: int) -> list[str]:
    """One name per class in label order: ``data.class_names`` (exactly ``num_classes`` of them), else the image or
    text folder's sorted sub-folder names (the labels are their indices), the built-in text classes, or "0".."K-1"."""
    given = cfg.class_names
    if given is not None:
        if len(given) != num_classes:
            raise DataError(f"{_where(cfg)}: data.class_names has {len(given)} name(s), but the data has {num_classes} "
                            f"classes (labels 0..{num_classes - 1}); give exactly one name per class, in label order")
        return list(given)
    if cfg.source in ("imagefolder", "text"):
        return sorted(p.name for p in Path(cfg.path).iterdir() if p.is_dir())[:num_classes]
    if cfg.source == "stdlib-text":
        from compress.data.text import STDLIB_CLASSES

        return list(STDLIB_CLASSES)[:num_classes]
    return [str(i) for i in range(num_classes)]


def _normalizer(cfg, x):
    """``rows -> (rows - mean[c]) / std[c]`` for ``data.normalize`` (None without it), checked against ``x``'s channels."""
    norm = cfg.normalize
    if norm is None:
        return None
    if x.ndim < 3 or x.shape[1] != len(norm.mean):
        what = f"{x.shape[1]} channels (x has shape {tuple(x.shape)}, channels on axis 1)" if x.ndim >= 3 else \
            f"no channel axis (x is N x F = {tuple(x.shape)})"
        raise DataError(f"{_where(cfg)}: data.normalize has {len(norm.mean)} mean/std value(s) but the data has {what}; "
                        "normalize is per channel of N x C x H x W images: give one mean and one std per channel")
    axes = (1, -1) + (1,) * (x.ndim - 2)
    mean = np.asarray(norm.mean, np.float32).reshape(axes)
    std = np.asarray(norm.std, np.float32).reshape(axes)

    def apply(rows: np.ndarray) -> np.ndarray:
        rows = rows if rows.flags.writeable and rows.dtype == np.float32 else np.array(rows, np.float32)
        rows -= mean
        rows /= std
        return rows
    return apply


def load_data(cfg, seed: int) -> Splits:
    """Load, split and normalise (see the module docstring; a memory-mapped npz is normalised as its rows are read);
    the split depends on the seed only, so every model of a run sees the same test set."""
    x, y, tr, va, te = split_rows(cfg, seed)
    num_classes = int(y.max()) + 1
    for part, idx in (("val", va), ("test", te), ("train", tr)):
        if len(idx) == 0:
            raise DataError(f"{_where(cfg)}: the {part} split is empty ({len(y)} samples, split val={cfg.split.val}, "
                            f"test={cfg.split.test}); use more data or larger split fractions")
    names = class_names(cfg, num_classes)
    norm = _normalizer(cfg, x)
    h = hashlib.sha256()
    for block in itertools.chain(_chunks(x), (y, tr, va, te)):
        h.update(np.ascontiguousarray(block).tobytes())
    # What the bytes above do not show, only when set (so that the fingerprint of data without them is unchanged):
    # the class names travel into the model files' metadata, which cached stage outputs must match.
    extra = {k: v for k, v in (("normalize", cfg.normalize and cfg.normalize.model_dump()),
                               ("class_names", names if names != [str(i) for i in range(num_classes)] else None))
             if v is not None}
    if extra:
        h.update(json.dumps(extra, sort_keys=True).encode())
    if norm is not None and not isinstance(x, np.memmap):
        x = norm(x)
    rows = (lambda idx: Rows(x, idx, norm)) if isinstance(x, np.memmap) else (lambda idx: x[idx])
    return Splits(Dataset(rows(tr), y[tr]), Dataset(rows(va), y[va]), Dataset(rows(te), y[te]),
                  num_classes, tuple(x.shape[1:]), h.hexdigest()[:16], tuple(names))
