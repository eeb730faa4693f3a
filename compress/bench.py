"""Timing protocol: warm-up, then interleaved rounds in one process (shuffled order each round), percentiles.

Ratios between models measured this way are comparable; absolute times from two runs are not.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["Timing", "time_interleaved", "time_rounds", "peak_rss_bytes", "bench_files", "cpu_info", "batch_of"]


@dataclass(frozen=True)
class Timing:
    p50: float  # milliseconds per call
    p90: float
    p99: float
    mean: float
    calls: int

    @classmethod
    def of(cls, samples_ns: list[int]) -> "Timing":
        ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(float(p50), float(p90), float(p99), float(ms.mean()), len(ms))

    def as_dict(self) -> dict:
        return asdict(self)


def time_rounds(runners: dict[str, Callable[[], object]], *, rounds: int = 30, calls: int = 20,
                warmup: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-call times in nanoseconds, shape (rounds, calls), for each zero-argument callable.

    Every round visits all callables in a fresh random order, so row ``r`` of two models was timed
    back to back: the per-round ratio of two models cancels most of the drift of a shared machine
    (the statistic ``compress check`` bootstraps).
    """
    rng = np.random.default_rng(seed)
    names = list(runners)
    for name in names:  # warm-up: first calls allocate buffers and pick kernels
        for _ in range(warmup):
            runners[name]()
    samples = {n: np.zeros((rounds, calls), dtype=np.int64) for n in names}
    clock = time.perf_counter_ns
    for r in range(rounds):
        for i in rng.permutation(len(names)):
            fn, out = runners[names[i]], samples[names[i]][r]
            for c in range(calls):
                t0 = clock()
                fn()
                out[c] = clock() - t0
    return samples


def time_interleaved(runners: dict[str, Callable[[], object]], *, rounds: int = 30, calls: int = 20,
                     warmup: int = 10, seed: int = 0) -> dict[str, Timing]:
    """``time_rounds`` summarised per callable: interleaving spreads machine noise (other tenants, frequency
    changes) evenly over the models, so their ratio is fair even when absolute times drift."""
    samples = time_rounds(runners, rounds=rounds, calls=calls, warmup=warmup, seed=seed)
    return {n: Timing.of(s.ravel().tolist()) for n, s in samples.items()}


def peak_rss_bytes() -> int | None:
    """The process's peak resident set size (VmHWM in /proc/self/status), in bytes; None off Linux.

    A high-water mark of the whole process: its growth over one model's load and first runs is what
    that runtime and model added on top of the peak so far (allocator reuse can hide part of it, so
    it is a lower bound of the model's own footprint; exact numbers need one process per model).
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    return None


def batch_of(x: np.ndarray, n: int) -> np.ndarray:
    """``n`` rows of ``x`` (repeated when ``x`` has fewer), contiguous float32."""
    return np.ascontiguousarray(np.resize(x, (n, *x.shape[1:])), dtype=np.float32)


def bench_files(files: list[tuple[str, str | Path, str | None]], *, threads: int = 1, batch: int = 1,
                x: np.ndarray | None = None, y: np.ndarray | None = None, rounds: int = 30, calls: int = 20,
                warmup: int = 10, seed: int = 0) -> list[dict]:
    """One row per ``(name, path, runtime)`` (runtime None: by suffix), all timed with one protocol.

    Each model is loaded and run once in turn while the process's peak RSS is watched
    (``peak_rss_growth_bytes``: a lower bound of what that runtime and model added), then all are timed
    interleaved (``time_rounds``) on ``batch`` rows of ``x`` (zeros of the model's input shape without
    data) with ``threads`` threads (0 = all cores). With labels ``y``, accuracy and errors are measured on
    all of ``x``. A static-batch file (ExecuTorch, LiteRT) runs a larger batch as several calls of its
    ``static_batch``.
    """
    from compress.runtimes import load, runtime_for

    runners, rows = {}, []
    for name, path, runtime in files:
        before = peak_rss_bytes()
        runner = load(path, runtime, threads=threads)
        sample = x if x is not None else np.zeros((1, *runner.input_shape), np.float32)
        fn = runner.timer(batch_of(sample, batch))
        fn()
        after = peak_rss_bytes()
        runners[name] = fn
        rows.append({"name": name, "path": str(path), "runtime": runtime or runtime_for(path).name,
                     "size_bytes": runner.size_bytes, "static_batch": runner.static_batch,
                     "peak_rss_growth_bytes": None if before is None or after is None else after - before,
                     "batch": batch, "threads": getattr(runner, "threads_used", threads), "_runner": runner})
    timings = time_interleaved(runners, rounds=rounds, calls=calls, warmup=warmup, seed=seed)
    for row in rows:
        runner = row.pop("_runner")
        row["latency_ms"] = timings[row["name"]].as_dict()
        if x is not None and y is not None:
            pred = runner.predict(x).argmax(1)
            row["accuracy"], row["errors"] = float((pred == y).mean()), int((pred != y).sum())
    return rows


def cpu_info() -> dict:
    """CPU model and the SIMD features that decide INT8 speed (recorded in every report)."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text(errors="replace") if cpuinfo.exists() else ""
    name = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    found = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    model = name.group(1).strip() if name else platform.processor() or platform.machine()
    flags = set(found.group(1).split()) if found else set()
    wanted = ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"]
    return {"model": model, "machine": platform.machine(), "cores": os.cpu_count(),
            "features": [f for f in wanted if f in flags]}
