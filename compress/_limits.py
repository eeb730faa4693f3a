"""Bounds on what compress reads from disk, and the check that a data path is a regular file.

A recipe, an npz or an image folder may come from someone else. Each limit below bounds the memory or
time that one input can cost *before* compress has read it whole, and each sits far above what a real
recipe or dataset needs; an input above a limit is refused with a message that names the file, the
limit and what to do instead.
"""

from __future__ import annotations

import os
import stat

from compress.errors import DataError

__all__ = ["MAX_RECIPE_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_EVENTS", "MAX_IMAGE_PIXELS", "MAX_IMAGE_FOLDER_BYTES",
           "MAX_NPY_BYTES", "MAX_COMPRESSION_RATIO", "RATIO_CHECKED_FROM_BYTES", "file_kind", "regular_file",
           "fmt_bytes"]

MAX_RECIPE_BYTES = 1_000_000
"""Bytes (1 MB). A recipe file above this is refused before it is parsed: the shipped recipes are under
5 KB, and the YAML parser holds the whole text and its events in memory."""

MAX_YAML_DEPTH = 64
"""Nesting levels of YAML mappings and lists. The deepest real recipe key (a loss pair of a stage) is 7
levels down; the YAML composer recurses once per level, so thousands of ``[`` would exhaust the stack."""

MAX_YAML_EVENTS = 200_000
"""YAML parse events (about one per key, value and bracket). A 1 MB list of one-digit items has 250,000;
a real recipe has a few hundred."""

MAX_IMAGE_PIXELS = 8192 * 8192
"""Pixels (width x height, 64 Mpx) of one image in an image folder, checked from the file's header before it is
decoded. It admits any camera photo (61 Mpx is the largest common sensor) and refuses decompression bombs: a
PNG of 30000 x 30000 zeros is a few hundred KB on disk but 3.6 GB decoded (PIL itself only warns from 89 Mpx).
Decoding one image at the limit takes 256 MB (PIL keeps RGB as 4 bytes a pixel)."""

MAX_IMAGE_FOLDER_BYTES = 4 << 30
"""Bytes (4 GiB) of the decoded image-folder array (images x output pixels x channels x 4 bytes of float32),
summed from the headers before any image is decoded. An image folder is loaded into memory whole; larger
datasets belong in an uncompressed npz, which is memory-mapped, or need a smaller ``data.image_size``."""

MAX_NPY_BYTES = 8 << 30
"""Bytes (8 GiB) of one array (``x.npy`` or ``y.npy``) of an npz, as its header declares, checked before it is
mapped or decompressed. A compressed or non-float32 array is read into memory whole; an uncompressed float32
``x`` is memory-mapped, but a header claiming more than the file holds is refused whatever its size."""

MAX_COMPRESSION_RATIO = 1000
"""Uncompressed / compressed size of a compressed npz member. Deflate cannot exceed 1032:1, which it reaches
only on runs of one byte; real features compress 2-10x and sorted int64 labels ~700x. A bzip2 member of zeros
reaches millions to one: a small file that decompresses into all the memory there is."""

RATIO_CHECKED_FROM_BYTES = 64 << 20
"""Bytes (64 MiB): MAX_COMPRESSION_RATIO applies to members that decompress to more than this, so small,
very regular arrays (sorted uint8 or bool labels compress ~1028x) are still accepted: they cost little memory."""


def fmt_bytes(n: int | float) -> str:
    """``n`` bytes for a message: ``'1.5 GiB'``, ``'4 GiB'``, ``'812 B'`` (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" or float(n).is_integer() else f"{n:.1f} {unit}"
        n /= 1024


_KINDS = ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISLNK, "a symbolic link"))


def file_kind(mode: int) -> str:
    """What an ``st_mode`` is, for a message: ``'a FIFO'``, ``'a socket'``, ``'a character device'``, ..."""
    return next((name for test, name in _KINDS if test(mode)), "an unknown kind of file")


def regular_file(path: str | os.PathLike, name: str | None = None, error: type[Exception] = DataError) -> os.stat_result:
    """``os.stat(path)`` if ``path`` is a regular file (a symbolic link to one is fine); else raise
    ``error("<name> is a FIFO, not a regular file")`` (``name`` defaults to the path).

    Checked before a data file is opened: opening a FIFO blocks until another process writes to it,
    and a character device such as /dev/zero never ends.
    """
    name = str(path) if name is None else name
    try:
        st = os.stat(path)
    except FileNotFoundError:
        broken = " (a broken symbolic link)" if os.path.islink(path) else ""
        raise error(f"{name} does not exist{broken}") from None
    except OSError as exc:
        raise error(f"{name} cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{name} is {file_kind(st.st_mode)}, not a regular file")
    return st
