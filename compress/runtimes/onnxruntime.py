"""onnxruntime on CPU: sessions set up for fair timing of several models in one process."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.errors import DataError, ModelError
from compress.runtimes.base import Runner, register_runtime

__all__ = ["session", "OPT_LEVELS", "OrtRunner"]

OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}  # names of ort.GraphOptimizationLevel


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
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[opt_level])
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class OrtRunner(Runner):
    """An onnxruntime CPU session (any batch size); ``.onnx`` and ``.ort`` files alike."""

    def __init__(self, path, threads: int = 1, opt_level: str = "all"):
        super().__init__(path)
        self.session = session(path, threads=threads, opt_level=opt_level)
        inputs = self.session.get_inputs()
        if len(inputs) > 1:  # a language model's decoder: input_ids and its key/value cache
            raise ModelError(f"{path} takes {len(inputs)} inputs ({', '.join(i.name for i in inputs[:3])}, ...): a "
                             "decoder with a key/value cache, not a one-input model; its generation speed is timed by "
                             "compress run (the report's generation benchmark) and compress check")
        self.input_name = inputs[0].name

    @property
    def input_shape(self) -> tuple[int, ...]:
        dims = self.session.get_inputs()[0].shape[1:]
        if not all(isinstance(d, int) for d in dims):
            raise DataError(f"{self.path}: input has symbolic non-batch dimensions {dims}; pass --data")
        return tuple(dims)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def _call(self, x: np.ndarray):
        feed, run = {self.input_name: x}, self.session.run
        return lambda: run(None, feed)


load = register_runtime("ort", suffixes=(".onnx",))(OrtRunner)  # onnxruntime's CPU execution provider
