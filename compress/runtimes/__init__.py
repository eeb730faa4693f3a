"""Benchmark runtimes, one file each. Adding a runtime is one new file and one import line here."""

from compress.runtimes import executorch, litert, onnxruntime, ort_mobile  # noqa: F401  (registers)
from compress.runtimes.base import RUNTIMES, Runner, available, installed, load, register_runtime, runtime_for

__all__ = ["RUNTIMES", "Runner", "available", "installed", "load", "register_runtime", "runtime_for", "onnxruntime"]
