"""Writing files safely: atomic writes, paths that cannot leave the output root, locks, and publishing a
finished run without losing the previous one."""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

from compress.errors import UnsafePathError

__all__ = ["atomic_path", "write_text", "write_json", "inside", "claim_file", "staging", "publish"]


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it over ``target``, else delete it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)  # gone already once renamed over ``target``


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | Path, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, default=str) + "\n")


# --- paths inside the output root ------------------------------------------------------------------


def inside(root: str | Path, *parts: str | Path) -> Path:
    """``root / parts``, refusing any name that would leave ``root``.

    Refused: an absolute part, an empty part, ``.`` or ``..``, and any existing symlink *below* ``root``
    (one planted inside the output folder could point anywhere). ``root`` itself may be a symlink the
    user made. Use it for every path under the output root (``--output``): run folders, files, ``.cache``.
    """
    path = Path(root)
    for part in parts:
        text = str(part)
        if not text or os.path.isabs(text) or "\x00" in text:
            raise UnsafePathError(f"refusing to write {text!r} under {root}: not a relative name inside it")
        for seg in text.replace("\\", "/").split("/"):
            if seg in ("", ".", ".."):
                raise UnsafePathError(f"refusing to write {text!r} under {root}: it would leave the output folder")
            path = path / seg
            if path.is_symlink():
                raise UnsafePathError(f"refusing to write through {path}: it is a symlink inside the output folder "
                                      f"{root} (remove it; only the output folder itself may be a symlink)")
    return path


@contextlib.contextmanager
def claim_file(path: str | Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path``, created if missing: never truncated, never through a symlink.

    Yields True once held, or False at once when ``blocking`` is False and another process holds it.
    """
    import fcntl  # POSIX only

    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)  # no O_TRUNC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(f"lock file {path} is a symlink; refusing to use it (remove it)") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePathError(f"lock file {path} is not a regular file; refusing to use it (remove it)")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


# --- publishing a run ------------------------------------------------------------------------------


@contextlib.contextmanager
def staging(out_dir: Path) -> Iterator[Path]:
    """A fresh folder inside ``out_dir`` to build a run in; removed afterwards (published or failed).

    Stale staging folders of runs that were killed are removed first (call it under the run's lock).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(".partial-*"):
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=".partial-", dir=out_dir))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish(staged: Path, out_dir: Path, owned: tuple[str, ...]) -> None:
    """Move a finished run from ``staged`` into ``out_dir``: each item replaces its namesake, ``report.json`` last.

    Items of ``out_dir`` that match an ``owned`` pattern (fnmatch) but that this run did not make are
    removed: files of an earlier run would be mistaken for this one's. Anything else in ``out_dir``
    (a search, a check, the user's own files) is left alone. Nothing is replaced before every new
    file is complete, so a failing run never costs the previous run's outputs.
    """
    made = sorted(os.listdir(staged), key=lambda n: (n == "report.json", n))
    for name in made:
        src, dst = staged / name, inside(out_dir, name)
        old = None
        if src.is_dir() and dst.exists():  # rename cannot replace a folder: the old one is moved aside first
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=out_dir))
            os.replace(dst, old / name)
        os.replace(src, dst)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    for name in os.listdir(out_dir):
        if name not in made and any(fnmatch.fnmatchcase(name, p) for p in owned):
            stale = inside(out_dir, name)
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink()
