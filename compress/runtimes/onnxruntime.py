"""onnxruntime on CPU: sessions set up for fair timing of several models in one process."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["session", "predict", "OPT_LEVELS"]

OPT_LEVELS = ("disable", "basic", "extended", "all")


def session(path: str | Path, threads: int = 1, opt_level: str = "all"):
    """A CPU InferenceSession with ``threads`` intra-op threads (0 = all cores).

    Spinning is off: with several sessions in one process, idle spinning threads of one session
    steal the cores of the next and p90 rises several-fold (measured, shared/BENCHMARKING.md).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opt_level]
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def predict(sess, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits for every row of ``x``, in batches."""
    name = sess.get_inputs()[0].name
    out = [sess.run(None, {name: np.ascontiguousarray(x[i:i + batch_size])})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(out)
