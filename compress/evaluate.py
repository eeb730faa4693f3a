"""Measure every model file the same way: test accuracy, agreement with the teacher, size, latency.

Accuracy is read off the ONNX file that ships, run by onnxruntime, on the test split that no stage
trained, selected or calibrated on. Latency is timed interleaved in this one process.
"""

from __future__ import annotations

from pathlib import Path

from compress.bench import batch_of, time_interleaved
from compress.data import Splits
from compress.runtimes.onnxruntime import OrtRunner

__all__ = ["evaluate", "evaluate_runtimes"]


def evaluate(models: list[dict], splits: Splits, bench, seed: int = 0) -> list[dict]:
    """Add accuracy, errors, agreement, size_bytes, latency_ms (batch 1, 1 thread) and latency_batch_ms.

    ``models`` entries need ``name`` and ``path``; the first entry with role 'teacher' is the reference.
    """
    test = splits.test
    preds = {m["name"]: OrtRunner(m["path"], threads=0).predict(test.x).argmax(1) for m in models}
    teacher = next((m["name"] for m in models if m.get("role") == "teacher"), None)
    # Batch 1 on one thread: the mobile-class proxy. One session per model, all alive at once.
    t1 = time_interleaved({m["name"]: OrtRunner(m["path"], threads=1).timer(test.x[:1]) for m in models},
                          rounds=bench.rounds, calls=bench.calls, seed=seed)
    xb = batch_of(test.x, bench.batch)
    tb = time_interleaved({m["name"]: OrtRunner(m["path"], threads=bench.threads).timer(xb) for m in models},
                          rounds=bench.rounds, calls=max(1, bench.calls // 4), warmup=3, seed=seed + 1)
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


_ROW_KEYS = ("runtime", "path", "size_bytes", "static_batch", "accuracy", "errors", "peak_rss_growth_bytes",
             "latency_ms")  # of a bench_files row, kept in a runtimes row


def evaluate_runtimes(final_files: dict[str, str], teacher_path, splits: Splits, bench, seed: int = 0,
                      fp32_path=None) -> dict:
    """The final model in every format, beside the teacher (onnxruntime) and, when the final model is quantized,
    its fp32 ONNX counterpart (``fp32_path``: the row every shipped file is held against), all timed by one protocol.

    Returns ``{"runtimes": [one row per file], "mobile_usability": {...}}`` (the latter when an .ort file exists);
    every file of one setting (batch 1 on 1 thread; ``bench.batch`` on ``bench.threads``) is timed in the same
    interleaved rounds (``compress.bench.bench_files``).
    """
    from compress.bench import bench_files

    files = [("teacher", teacher_path, "ort")] + [(f"final ({fmt})", path, None) for fmt, path in final_files.items()]
    if fp32_path is not None:
        files.append(("fp32 (onnx)", fp32_path, "ort"))
    test = splits.test
    one = bench_files(files, threads=1, batch=1, x=test.x, y=test.y, rounds=bench.rounds, calls=bench.calls, seed=seed)
    big = bench_files(files, threads=bench.threads, batch=bench.batch, x=test.x, rounds=bench.rounds,
                      calls=max(1, bench.calls // 4), warmup=3, seed=seed + 1)
    rows = []
    for a, b in zip(one, big):
        model, _, fmt = a["name"].partition(" (")
        rows.append({"name": a["name"], "model": model, "format": fmt.rstrip(")") or "onnx",
                     **{k: a[k] for k in _ROW_KEYS}, "latency_batch_ms": b["latency_ms"]})
    out: dict = {"runtimes": rows}
    if "ort" in final_files:
        from compress.runtimes.ort_mobile import mobile_usability

        out["mobile_usability"] = mobile_usability(final_files["onnx"])
    return out
