"""The on-disk cache: content-keyed entries, verified every time they are served.

A cache is shared between runs, CI jobs and machines, so nothing read back from it is believed
unchecked. Layout under ``<output>/.cache``::

    <kind>/<key>/                 one entry: its files and manifest.json
    <kind>/<key>/manifest.json    {"format", "version", "kind", "key", "files": {name: {"sha256", "size"}},
                                   "meta", "meta_sha256"}
    locks/<kind>.<key>.lock       claim(): one computation of a key at a time, across processes
    quarantine/<kind>.<key>.<utc>.<n>/   entries that failed verification, moved aside by rename

The rules (issue "Trust nothing on disk", docs/caching-and-safety.md) are stated where they are kept: ``put``
(written whole, never overwritten), ``get`` (verified, or quarantined and recomputed), ``Entry`` (readers hash
the bytes they use). File names come from this code, never from a manifest (``../x`` is a damaged entry), and
symlinks inside the cache are refused.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from compress._io import atomic_path, claim_file, inside
from compress._progress import warn
from compress.errors import CompressError
from compress.schema import refuse_constant

__all__ = ["cache_key", "sha256_file", "Cache", "Entry", "CorruptEntry", "STAGE_KIND", "runtime_files", "MANIFEST"]

MANIFEST = "manifest.json"
FORMAT, VERSION = "compress-cache-entry", 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # a file name this code chose: no '/', no '..', no dot-files
_KEY = re.compile(r"^[0-9a-f]{8,64}$")
_MAX_MANIFEST = 1 << 20  # bytes: a manifest lists a handful of files; a bigger one is not ours


class CorruptEntry(CompressError):
    """A cache entry failed verification (the cache moves it aside; callers recompute)."""


def cache_key(*parts: Any) -> str:
    """sha256 of the JSON form of ``parts`` (configs, data fingerprint, seed, versions)."""
    import compress

    blob = json.dumps([compress.__version__, torch.__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _canonical(meta: Any) -> bytes:
    return json.dumps(meta, sort_keys=True, default=str, allow_nan=False).encode()


@dataclass(frozen=True)
class Entry:
    """A verified cache entry: ``files`` maps each file name to its recorded sha256 and size."""

    kind: str
    key: str
    dir: Path
    files: dict[str, dict]
    meta: dict

    def read_bytes(self, name: str) -> bytes:
        """The file's bytes, checked against the manifest as they are read."""
        if name not in self.files:
            raise CorruptEntry(f"cache entry {self.kind}/{self.key} has no file {name!r}")
        data = _read_regular(self.dir / name)
        if hashlib.sha256(data).hexdigest() != self.files[name]["sha256"]:
            raise CorruptEntry(f"cache entry {self.kind}/{self.key}: {name} changed on disk (sha256 mismatch)")
        return data

    def copy_to(self, name: str, dest: Path) -> Path:
        """Copy a file out (atomically) from the bytes ``read_bytes`` verified; a mismatch leaves no ``dest``."""
        data = self.read_bytes(name)
        with atomic_path(dest) as tmp:
            tmp.write_bytes(data)
        return dest


def _read_regular(path: Path) -> bytes:
    """A regular file's bytes, refusing symlinks, FIFOs and devices (opened with O_NOFOLLOW, never blocking)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise CorruptEntry(f"{path}: cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise CorruptEntry(f"{path}: not a regular file")
        return f.read()


class Cache:
    """Content-keyed, verified entries under ``root`` (``<output>/.cache``).

    Args:
        root: the cache folder, ``inside(output_root, ".cache")`` (so not a symlink made inside the root).
        enabled: False (``--force``): ``get`` misses, ``put`` still stores (healing a bad entry).
        read_only: a reader that must not move entries (a training rank other than 0): a damaged
            entry raises CorruptEntry instead.

    Warnings (a damaged entry moved aside) go to stderr and to ``warnings``, which the report lists.
    """

    def __init__(self, root: Path, *, enabled: bool = True, read_only: bool = False):
        self.root, self.enabled, self.read_only = Path(root), enabled, read_only
        self.warnings: list[str] = []

    # --- paths ------------------------------------------------------------------------------------

    def _dir(self, kind: str, key: str) -> Path:
        if not _NAME.match(kind) or not _KEY.match(key):
            raise CompressError(f"cache: invalid entry name {kind!r}/{key!r}")
        return inside(self.root, kind, key)

    # --- reading ----------------------------------------------------------------------------------

    def has(self, kind: str, key: str) -> bool:
        """Whether an entry is there (NOT verified: for estimates only; use ``get`` to use it)."""
        return self.enabled and os.path.isfile(self._dir(kind, key) / MANIFEST)

    def get(self, kind: str, key: str) -> Entry | None:
        """The verified entry, or None (absent, disabled, or damaged: then it is moved aside with a warning)."""
        if not self.enabled:
            return None
        folder = self._dir(kind, key)
        if not os.path.lexists(folder):
            return None
        try:
            return self._verify(kind, key, folder)
        except CorruptEntry as exc:
            self.discard(kind, key, str(exc))
            return None

    def _verify(self, kind: str, key: str, folder: Path) -> Entry:
        where = f"cache entry {kind}/{key}"
        if folder.is_symlink() or not folder.is_dir():
            raise CorruptEntry(f"{where} is not a folder")
        try:
            raw = _read_regular(folder / MANIFEST)
        except CorruptEntry:
            raise CorruptEntry(f"{where}: {MANIFEST} is missing or unreadable") from None
        if len(raw) > _MAX_MANIFEST:
            raise CorruptEntry(f"{where}: {MANIFEST} is {len(raw):,} bytes, not a manifest")
        try:
            man = json.loads(raw, parse_constant=refuse_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: "[[[[..." nested past the limit
            raise CorruptEntry(f"{where}: {MANIFEST} is not valid JSON ({exc})") from None
        if not (isinstance(man, dict) and man.get("format") == FORMAT and man.get("version") == VERSION
                and man.get("kind") == kind and man.get("key") == key and isinstance(man.get("files"), dict)
                and isinstance(man.get("meta"), dict)):
            raise CorruptEntry(f"{where}: {MANIFEST} is not a {FORMAT} v{VERSION} manifest for this key")
        if hashlib.sha256(_canonical(man["meta"])).hexdigest() != man.get("meta_sha256"):
            raise CorruptEntry(f"{where}: its metadata changed on disk (meta_sha256 mismatch)")
        files = man["files"]
        on_disk = {p.name for p in folder.iterdir()} - {MANIFEST}
        for name, rec in files.items():
            if not (isinstance(name, str) and _NAME.match(name) and name != MANIFEST and isinstance(rec, dict)
                    and isinstance(rec.get("sha256"), str) and isinstance(rec.get("size"), int)):
                raise CorruptEntry(f"{where}: {MANIFEST} lists an invalid file name or record ({name!r})")
            path = folder / name
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                raise CorruptEntry(f"{where}: {name} is missing") from None
            if not stat.S_ISREG(st.st_mode):
                raise CorruptEntry(f"{where}: {name} is not a regular file")
            if st.st_size != rec["size"]:
                raise CorruptEntry(f"{where}: {name} is {st.st_size:,} bytes, the manifest says {rec['size']:,}")
            if sha256_file(path) != rec["sha256"]:
                raise CorruptEntry(f"{where}: {name} changed on disk (sha256 mismatch)")
        extra = sorted(on_disk - set(files))
        if extra:
            raise CorruptEntry(f"{where}: files not in its manifest: {', '.join(extra[:5])}")
        return Entry(kind, key, folder, dict(files), man["meta"])

    def discard(self, kind: str, key: str, why: str) -> None:
        """Move a damaged entry aside (``quarantine/``), with a warning naming it and where it went."""
        if self.read_only:
            raise CorruptEntry(why)
        folder = self._dir(kind, key)
        target = None
        if os.path.lexists(folder):
            qroot = inside(self.root, "quarantine")
            qroot.mkdir(parents=True, exist_ok=True)
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
            for n in range(1000):
                candidate = qroot / f"{kind}.{key}.{stamp}.{n}"
                try:
                    os.rename(folder, candidate)  # rename, never delete: the bad entry stays for inspection
                    target = candidate
                    break
                except OSError as exc:
                    if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):  # that quarantine name is taken
                        continue
                    if not os.path.lexists(folder):  # another process moved it first
                        break
                    raise
        message = (f"{why}; recomputing it" + (f" (the damaged entry was moved to {target})" if target else ""))
        self.warnings.append(message)
        warn(message)

    # --- writing ----------------------------------------------------------------------------------

    def put(self, kind: str, key: str, files: dict[str, Path | bytes | Callable[[Path], Any]],
            meta: dict | None = None) -> Entry:
        """Store an entry whole: ``files`` maps a name to a source file, bytes, or a writer ``fn(path)``.

        An existing valid entry is kept as it is (entries are never overwritten in place); an existing
        damaged one is moved aside first.
        """
        if self.read_only:
            raise CompressError(f"cache entry {kind}/{key}: this process only reads the cache")
        folder = self._dir(kind, key)
        folder.parent.mkdir(parents=True, exist_ok=True)
        meta = meta or {}
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=folder.parent))
        try:
            records = {}
            for name, src in files.items():
                if not _NAME.match(name) or name == MANIFEST:
                    raise CompressError(f"cache: invalid file name {name!r}")
                dest = tmp / name
                if isinstance(src, bytes):
                    dest.write_bytes(src)
                elif callable(src):
                    src(dest)
                else:
                    shutil.copyfile(src, dest)
                records[name] = {"sha256": sha256_file(dest), "size": dest.stat().st_size}
            manifest = {"format": FORMAT, "version": VERSION, "kind": kind, "key": key, "files": records,
                        "meta": meta, "meta_sha256": hashlib.sha256(_canonical(meta)).hexdigest()}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
            for attempt in range(2):
                try:
                    os.rename(tmp, folder)  # atomic; fails if the entry exists: never replaced in place
                    return Entry(kind, key, folder, records, json.loads(json.dumps(meta, default=str)))
                except OSError as exc:
                    if not os.path.lexists(folder):
                        raise
                    try:  # another writer stored this key first: keep theirs if it is sound
                        return self._verify(kind, key, folder)
                    except CorruptEntry as bad:
                        if attempt:
                            raise CompressError(f"cache entry {kind}/{key} could not be stored ({exc})") from None
                        self.discard(kind, key, str(bad))
            raise AssertionError("unreachable")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already once renamed into place

    def claim(self, kind: str, key: str, *, blocking: bool = True) -> contextlib.AbstractContextManager[bool]:
        """Hold the key's lock (``claim_file``) while computing it, so concurrent workers compute each key once.

        Look the entry up again after the claim: the other worker may have stored it meanwhile.
        """
        self._dir(kind, key)  # validates the names
        folder = inside(self.root, "locks")
        folder.mkdir(parents=True, exist_ok=True)
        return claim_file(folder / f"{kind}.{key}.lock", blocking=blocking)

    # --- conveniences -----------------------------------------------------------------------------

    def _parsed(self, kind: str, key: str, parse: Callable[[Entry], Any], errors: tuple, why=str) -> Any | None:
        """``parse(entry)`` of the verified entry, or None (absent, or unparsable: then moved aside, ``why(exc)``)."""
        entry = self.get(kind, key)
        try:
            return None if entry is None else parse(entry)
        except errors as exc:
            self.discard(kind, key, why(exc))
            return None

    def get_json(self, kind: str, key: str) -> Any | None:
        return self._parsed(kind, key, lambda e: json.loads(e.read_bytes("data.json"), parse_constant=refuse_constant),
                            (CorruptEntry, ValueError, RecursionError),
                            lambda exc: f"cache entry {kind}/{key}: data.json unreadable ({exc})")

    def put_json(self, kind: str, key: str, obj: Any) -> None:
        self.put(kind, key, {"data.json": json.dumps(obj, default=str).encode()})

    def get_weights(self, kind: str, key: str, template: torch.nn.Module) -> torch.nn.Module | None:
        """A copy of ``template`` (never ``template`` itself) with the entry's weights, or None."""
        from compress.models.checkpoint import load_model_bytes

        return self._parsed(kind, key, lambda e: load_model_bytes(template, e.read_bytes("model.safetensors"),
                                                                   f"cache entry {kind}/{key}"), (CompressError,))

    def put_weights(self, kind: str, key: str, model: torch.nn.Module, files: dict | None = None,
                    meta: dict | None = None) -> Entry:
        from compress.models.checkpoint import save_model

        return self.put(kind, key, {"model.safetensors": lambda p: save_model(model, p), **(files or {})}, meta)

    # --- stage outputs (kind STAGE_KIND) ---------------------------------------------------------

    def put_stage(self, key: str, art, arch=lambda model: None) -> Entry:
        """Store a stage's output artifact. torch: ``model.safetensors`` (pruned shapes kept, see
        compress.models.checkpoint); ONNX: ``model.onnx``, the runtime files by format (``model.ort``, ``model.pte``,
        ``model.tflite``) and, when the stage kept it, ``model.safetensors``. ``arch(model)``: what a task needs to
        rebuild a model's architecture on load (JSON; None when the template's own architecture fits, with the
        checkpoint's layer shapes)."""
        from compress.models.checkpoint import save_model

        files: dict = {}
        stems: dict[str, str] = {}
        if art.model is not None:
            files["model.safetensors"] = lambda p: save_model(art.model, p)
        for j, (_, model) in enumerate(art.extra):
            files[f"extra{j}.safetensors"] = lambda p, model=model: save_model(model, p)
        if art.format == "onnx":
            for fmt, p in {"onnx": art.path, **runtime_files(art.info)}.items():
                files["model.onnx" if fmt == "onnx" else _RUNTIME_FILE[fmt]] = Path(p)
                stems[fmt] = Path(p).stem
        info = {k: v for k, v in art.info.items() if k not in ("files", "ort_path")}  # paths: rebuilt on load
        meta = {"name": art.name, "format": art.format, "params": art.params, "macs": art.macs, "info": info,
                "lineage": list(art.lineage), "stems": stems, "arch": arch(art.model) if art.model is not None else None,
                "extra": [[name, arch(model)] for name, model in art.extra]}
        return self.put(STAGE_KIND, key, files, meta)

    def get_stage(self, key: str, template, dest: Path, prefix: str):
        """The cached artifact (torch: weights loaded into a copy of ``template``, or of ``template(arch)`` when it
        is a function of the recorded architecture; onnx: files copied (verified) into ``dest`` under the stage's
        own file stem, which must be this stage's, ``prefix...``), or None when absent or damaged (a damaged entry
        is moved aside with a warning)."""
        from compress.artifact import Artifact
        from compress.models.checkpoint import load_model_bytes

        entry = self.get(STAGE_KIND, key)
        if entry is None:
            return None
        where = f"cache entry {STAGE_KIND}/{key}"
        try:
            meta = entry.meta
            fmt = meta["format"]
            if fmt not in ("torch", "onnx") or not isinstance(meta["info"], dict) or not isinstance(meta["stems"], dict):
                raise CorruptEntry(f"{where}: unreadable metadata")
            model = None
            build = (lambda arch: template) if isinstance(template, torch.nn.Module) else template
            if "model.safetensors" in entry.files:
                model = load_model_bytes(build(meta.get("arch")), entry.read_bytes("model.safetensors"), where)
            elif fmt == "torch":
                raise CorruptEntry(f"{where}: model.safetensors is missing")
            info, path = dict(meta["info"]), None

            def copy(f: str, name: str) -> Path:  # into ``dest``, under this stage's recorded file stem
                stem = meta["stems"].get(f)
                if not (isinstance(stem, str) and _STEM.match(stem) and stem.startswith(prefix)):
                    raise CorruptEntry(f"{where}: file name {stem!r} is not this stage's ({prefix}...)")
                return entry.copy_to(name, inside(dest, stem + Path(name).suffix))

            if fmt == "onnx":
                path = copy("onnx", "model.onnx")
                files = {f: str(copy(f, name)) for f, name in _RUNTIME_FILE.items() if name in entry.files}
                if files:
                    info["files"] = files
                if "ort" in files:
                    info["ort_path"] = files["ort"]
            extra = tuple((str(name), load_model_bytes(build(arch), entry.read_bytes(f"extra{j}.safetensors"), where))
                          for j, (name, arch) in enumerate(meta.get("extra") or []))
            return Artifact(str(meta["name"]), fmt, model, path, meta["params"], meta["macs"], info,
                            tuple(meta["lineage"]), key, extra)
        except (CompressError, KeyError, TypeError, ValueError) as exc:  # CorruptEntry is a CompressError
            self.discard(STAGE_KIND, key, str(exc) if isinstance(exc, CompressError)
                         else f"{where}: unreadable metadata ({type(exc).__name__}: {exc})")
            return None


# --- stage outputs ---------------------------------------------------------------------------------

STAGE_KIND = "stages"  # the cache kind of stage outputs (Cache.put_stage, Cache.get_stage)
_RUNTIME_FILE = {"ort": "model.ort", "executorch": "model.pte", "litert": "model.tflite"}  # format -> entry file
_STEM = re.compile(r"^[0-9]{2}_[a-z0-9_]{1,64}$")


def runtime_files(info: dict) -> dict[str, str]:
    """A stage's runtime files by format (``ort``, ``executorch``, ``litert``): ``info["files"]`` and ``ort_path``."""
    return {**({"ort": info["ort_path"]} if info.get("ort_path") else {}), **(info.get("files") or {})}
