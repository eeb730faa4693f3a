"""Benchmark runtimes, one file each."""

from compress.runtimes import onnxruntime

__all__ = ["onnxruntime"]
