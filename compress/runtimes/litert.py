"""LiteRT / TFLite (``.tflite``): export with litert-torch, run with the ai-edge-litert interpreter (``compress[litert]``).

Like ExecuTorch, a converted file has the example's static batch (resizing the input fails in the XNNPACK
delegate with litert-torch 0.10.0 / ai-edge-litert 2.3.0), so files are exported at batch 1 and the
runner splits larger inputs. The 8-bit path (litert-torch's PT2E quantizer, symmetric per-channel
weights, static int8 activations) produces a fully integer model: int8 input and output tensors, which
the runner quantizes and dequantizes with the file's own scale and zero point.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np

from compress.runtimes.base import Runner, native_output_silenced, pt2e_calibrated, register_runtime

__all__ = ["TfliteRunner", "export_tflite", "export_tflite_int8", "io_details"]


@register_runtime("litert", suffixes=(".tflite",), module="ai_edge_litert", extra="litert")
class TfliteRunner(Runner):
    """One ``ai_edge_litert.interpreter.Interpreter`` (XNNPACK delegate on CPU) with ``threads`` threads."""

    def __init__(self, path, threads: int = 1):
        super().__init__(path)
        from ai_edge_litert.interpreter import Interpreter

        with native_output_silenced():
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads or os.cpu_count() or 1)
            self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]
        sizes = tuple(int(d) for d in self._in["shape"])
        self.static_batch, self.input_shape = sizes[0], sizes[1:]
        self.integer_io = np.dtype(self._in["dtype"]).kind in "iu"

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        if not self.integer_io:
            return np.ascontiguousarray(x, dtype=np.float32)
        scale, zero = self._in["quantization"]
        info = np.iinfo(self._in["dtype"])
        return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(self._in["dtype"])

    def _dequantize(self, y: np.ndarray) -> np.ndarray:
        if np.dtype(self._out["dtype"]).kind not in "iu":
            return y
        scale, zero = self._out["quantization"]
        return ((y.astype(np.float32) - zero) * scale).astype(np.float32)

    def run(self, x: np.ndarray) -> np.ndarray:
        it = self.interpreter
        it.set_tensor(self._in["index"], self._quantize(x))
        it.invoke()
        return self._dequantize(it.get_tensor(self._out["index"]))

    def _call(self, x: np.ndarray):
        # Input set once: the timed call is invoke() plus reading the output, as in an app's loop.
        it, q, idx, out = self.interpreter, self._quantize(x), self._in["index"], self._out["index"]

        def call():
            it.set_tensor(idx, q)
            it.invoke()
            return it.get_tensor(out)

        return call


def io_details(path) -> dict[str, list[dict]]:
    """The file's inputs and outputs as the interpreter reports them: name, shape, dtype and, for an 8-bit tensor,
    the scale and zero point the app applies (``q = round(x / scale) + zero_point``; ``x = (q - zero_point) * scale``)."""
    from ai_edge_litert.interpreter import Interpreter

    with native_output_silenced():
        it = Interpreter(model_path=str(path))

    def row(d):
        (scale, zero), dtype = d["quantization"], np.dtype(d["dtype"])
        q = {"quantization": {"scale": float(scale), "zero_point": int(zero)}} if dtype.kind in "iu" else {}
        return {"name": d["name"], "shape": [int(v) for v in d["shape"]], "dtype": dtype.name, **q}
    return {"inputs": [row(d) for d in it.get_input_details()], "outputs": [row(d) for d in it.get_output_details()]}


@contextlib.contextmanager
def _quiet():
    # litert-torch prints a progress tree and absl logs for every conversion.
    with native_output_silenced(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def _write(edge_model, path: Path) -> Path:
    from compress._io import atomic_path

    with atomic_path(path) as tmp:
        edge_model.export(str(tmp))
    return path


def export_tflite(model, input_shape: tuple[int, ...], path: Path, batch: int = 1) -> Path:
    """fp32 ``.tflite`` at a static ``batch`` with ``litert_torch.convert``."""
    import torch

    with _quiet(), torch.no_grad():
        import litert_torch

        return _write(litert_torch.convert(model.eval(), (torch.zeros(batch, *input_shape),)), path)


def export_tflite_int8(model, input_shape: tuple[int, ...], path: Path, calibration: np.ndarray, batch: int = 1,
                       calib_batch: int = 32) -> Path:
    """8-bit ``.tflite``: litert-torch's PT2E quantizer (symmetric, per-channel), calibrated on ``calibration``."""
    import torch
    from torchao.quantization.pt2e import quantize_pt2e

    with _quiet(), torch.no_grad():
        import litert_torch
        from litert_torch.quantize import pt2e_quantizer as pq
        from litert_torch.quantize.quant_config import QuantConfig

        quantizer = pq.PT2EQuantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=True))
        prepared = pt2e_calibrated(model, input_shape, quantizer, calibration, batch, calib_batch)
        converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
        edge = litert_torch.convert(converted, (torch.zeros(batch, *input_shape),),
                                    quant_config=QuantConfig(pt2e_quantizer=quantizer))
        return _write(edge, path)
