"""Benchmark runtimes, one file each. Adding a runtime is one new file and one import line here."""

# Registration order is the order of listings and error messages: the core runtimes first.
from compress.runtimes import onnxruntime, ort_mobile  # noqa: I001,F401  (registers)
from compress.runtimes import executorch, litert  # noqa: F401  (registers; their packages are imported lazily)
from compress.runtimes.base import RUNTIMES, Runner, installed, load, register_runtime, runtime_for

__all__ = ["RUNTIMES", "Runner", "installed", "load", "register_runtime", "runtime_for", "onnxruntime"]
