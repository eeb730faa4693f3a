"""Measure every model file the same way: test accuracy, agreement with the teacher, size, latency.

Accuracy is read off the ONNX file that ships, run by onnxruntime, on the test split that no stage
trained, selected or calibrated on. Latency is timed interleaved in this one process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.bench import time_interleaved
from compress.data import Splits
from compress.runtimes.onnxruntime import predict, session

__all__ = ["evaluate"]


def _batch(x: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:n]) if reps > 1 else np.ascontiguousarray(x[:n])


def evaluate(models: list[dict], splits: Splits, bench, seed: int = 0) -> list[dict]:
    """Add accuracy, errors, agreement, size_bytes, latency_ms (batch 1, 1 thread) and latency_batch_ms.

    ``models`` entries need ``name`` and ``path``; the first entry with role 'teacher' is the reference.
    """
    test = splits.test
    preds = {}
    for m in models:
        sess = session(m["path"], threads=0)
        preds[m["name"]] = predict(sess, test.x).argmax(1)
    teacher = next((m["name"] for m in models if m.get("role") == "teacher"), None)
    # Batch 1 on one thread: the mobile-class proxy. One session per model, all alive at once.
    x1 = np.ascontiguousarray(test.x[:1])
    runners = {}
    for m in models:
        s = session(m["path"], threads=1)
        runners[m["name"]] = (lambda s=s, name=s.get_inputs()[0].name: s.run(None, {name: x1}))
    t1 = time_interleaved(runners, rounds=bench.rounds, calls=bench.calls, seed=seed)
    xb = _batch(test.x, bench.batch)
    runners = {}
    for m in models:
        s = session(m["path"], threads=bench.threads)
        runners[m["name"]] = (lambda s=s, name=s.get_inputs()[0].name: s.run(None, {name: xb}))
    tb = time_interleaved(runners, rounds=bench.rounds, calls=max(1, bench.calls // 4), warmup=3, seed=seed + 1)
    out = []
    for m in models:
        p = preds[m["name"]]
        entry = {**m, "path": str(m["path"]), "accuracy": float((p == test.y).mean()), "errors": int((p != test.y).sum()),
                 "agreement": float((p == preds[teacher]).mean()) if teacher else None,
                 "size_bytes": Path(m["path"]).stat().st_size,
                 "latency_ms": t1[m["name"]].as_dict(), "latency_batch_ms": tb[m["name"]].as_dict()}
        ort_path = m.get("info", {}).get("ort_path")
        if ort_path and Path(ort_path).exists():
            entry["ort_size_bytes"] = Path(ort_path).stat().st_size
        out.append(entry)
    return out
