"""The runtime registry: a runtime loads a model file and runs it on numpy batches, one file per runtime.

Every runtime is timed by the same protocol (``compress.bench.time_rounds``, interleaved), so the
numbers of two runtimes in one report or one ``compress bench`` call are comparable.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from compress.errors import CompressError, MissingExtraError

__all__ = ["Runner", "RuntimeSpec", "RUNTIMES", "register_runtime", "runtime_for", "load", "installed",
           "native_output_silenced", "pt2e_calibrated"]


class Runner:
    """A loaded model file (``path``). Subclasses implement ``run`` (one call on a batch the file accepts), set
    ``input_shape`` (or compute it in a property), and ``static_batch`` when the file accepts one batch size only
    (ExecuTorch, LiteRT)."""

    static_batch: int | None = None
    input_shape: tuple[int, ...]  # the shape of one sample (without the batch axis)

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Outputs for every row of ``x``; a static-batch file gets chunks of its batch, the last one padded."""
        step = self.static_batch or batch_size
        out = []
        for i in range(0, len(x), step):
            chunk = np.ascontiguousarray(x[i:i + step], dtype=np.float32)
            n = len(chunk)
            if self.static_batch and n < step:
                chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), np.float32)])
            out.append(np.asarray(self.run(chunk))[:n])
        return np.concatenate(out)

    def timer(self, x: np.ndarray) -> Callable[[], object]:
        """A zero-argument callable that runs ``x`` once (a static-batch file runs it in chunks)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.static_batch is None or len(x) == self.static_batch:
            return self._call(x)
        return lambda: self.predict(x)

    def _call(self, x: np.ndarray) -> Callable[[], object]:
        """One call on a batch the file accepts (contiguous float32); a runtime binds what it can ahead of time."""
        return lambda: self.run(x)


@dataclass(frozen=True)
class RuntimeSpec:
    name: str
    suffixes: tuple[str, ...]  # file suffixes it loads, e.g. (".pte",)
    load: Callable[[Path, int], Runner]  # load(path, threads) -> Runner (a Runner class); threads 0 = all cores
    module: str | None  # the import that must exist (None: a core dependency)
    extra: str | None  # the pip extra that installs it


RUNTIMES: dict[str, RuntimeSpec] = {}


def register_runtime(name: str, *, suffixes: tuple[str, ...], module: str | None = None, extra: str | None = None):
    """Register ``load(path, threads) -> Runner`` (a Runner class) under ``name``; a duplicate name raises."""

    def wrap(fn):
        if name in RUNTIMES:
            raise ValueError(f"runtime {name!r} is registered twice ({RUNTIMES[name].load.__module__} and {fn.__module__})")
        RUNTIMES[name] = RuntimeSpec(name, suffixes, fn, module, extra)
        return fn

    return wrap


def installed(name: str) -> bool:
    """Whether runtime ``name``'s optional package is importable (without importing it)."""
    spec = RUNTIMES[name]
    return spec.module is None or importlib.util.find_spec(spec.module) is not None


def runtime_for(path: str | Path) -> RuntimeSpec:
    """The runtime that loads ``path``, chosen by its suffix."""
    suffix = Path(path).suffix.lower()
    for spec in RUNTIMES.values():
        if suffix in spec.suffixes:
            return spec
    known = ", ".join(f"{s} ({r.name})" for r in RUNTIMES.values() for s in r.suffixes)
    raise CompressError(f"{path}: no runtime loads '{suffix or 'no suffix'}' files; known: {known}")


def load(path: str | Path, runtime: str | None = None, threads: int = 1) -> Runner:
    """Load ``path`` with ``runtime`` (default: chosen by suffix) on ``threads`` threads (0 = all cores)."""
    path = Path(path)
    if not path.is_file():
        raise CompressError(f"{path}: no such model file")
    if runtime is None:
        spec = runtime_for(path)
    elif runtime not in RUNTIMES:
        raise CompressError(f"unknown runtime {runtime!r}; valid choices: {', '.join(RUNTIMES)}")
    else:
        spec = RUNTIMES[runtime]
        if path.suffix.lower() not in spec.suffixes:
            raise CompressError(f"{path}: runtime {spec.name!r} loads {', '.join(spec.suffixes)} files")
    if not installed(spec.name):
        raise MissingExtraError(f"runtime {spec.name!r}", spec.extra, spec.module)
    return spec.load(path, threads)


@contextlib.contextmanager
def native_output_silenced():
    """Silence stdout/stderr at the file-descriptor level: native runtimes log from C++ (cpuinfo probes).

    ``COMPRESS_NATIVE_LOGS=1`` keeps them (to see why a native library aborted).
    """
    import os
    import sys

    if os.environ.get("COMPRESS_NATIVE_LOGS") == "1":
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def pt2e_calibrated(model, input_shape: tuple[int, ...], quantizer, calibration: np.ndarray, batch: int,
                    calib_batch: int):
    """``model`` exported with a dynamic batch, prepared for ``quantizer`` (pt2e) and run on ``calibration`` in
    batches of ``calib_batch`` (a graph module from torch.export runs any batch the model does): ready for
    ``convert_pt2e``. Call it under ``torch.no_grad()``."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    dim = torch.export.Dim("batch", min=1, max=max(calib_batch, batch, 2))
    graph = torch.export.export(model.eval(), (torch.zeros(max(batch, 2), *input_shape),), dynamic_shapes=({0: dim},))
    prepared = prepare_pt2e(graph.module(), quantizer)
    for i in range(0, len(calibration), calib_batch):
        prepared(torch.from_numpy(np.ascontiguousarray(calibration[i:i + calib_batch], dtype=np.float32)))
    return prepared
