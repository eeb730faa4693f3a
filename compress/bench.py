"""Timing protocol: warm-up, then interleaved rounds in one process (shuffled order each round), percentiles.

Ratios between models measured this way are comparable; absolute times from two runs are not.
"""

from __future__ import annotations

import platform
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["Timing", "time_interleaved", "cpu_info"]


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


def time_interleaved(runners: dict[str, Callable[[], object]], *, rounds: int = 30, calls: int = 20,
                     warmup: int = 10, seed: int = 0) -> dict[str, Timing]:
    """Time each zero-argument callable; every round visits all of them in a fresh random order.

    Interleaving spreads machine noise (other tenants, frequency changes) evenly over the models,
    so their ratio is fair even when absolute times drift.
    """
    rng = np.random.default_rng(seed)
    names = list(runners)
    for name in names:  # warm-up: first calls allocate buffers and pick kernels
        for _ in range(warmup):
            runners[name]()
    samples: dict[str, list[int]] = {n: [] for n in names}
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for i in rng.permutation(len(names)):
            fn, out = runners[names[i]], samples[names[i]]
            for _ in range(calls):
                t0 = clock()
                fn()
                out.append(clock() - t0)
    return {n: Timing.of(s) for n, s in samples.items()}


def cpu_info() -> dict:
    """CPU model and the SIMD features that decide INT8 speed (recorded in every report)."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        text = cpuinfo.read_text(errors="replace")
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        model = m.group(1).strip() if m else model
        m = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
        flags = set(m.group(1).split()) if m else set()
    import os

    wanted = ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"]
    return {"model": model, "machine": platform.machine(), "cores": os.cpu_count(),
            "features": [f for f in wanted if f in flags]}
