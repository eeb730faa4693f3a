"""ExecuTorch (``.pte``) with the XNNPACK delegate: export, 8-bit export and a runner (``compress[executorch]``).

``torch.export`` guards the example input's shape, so a ``.pte`` accepts exactly one batch size:
files are exported at a static batch (1 by default, what a phone runs), and the runner splits larger
inputs into calls of that batch. Thread count: see ``_set_threads``. (A dynamic batch dimension exports, but its memory plan caps the
input size below the declared maximum: measured with executorch 1.5.1, a 1..1024 batch failed at 64.)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from compress.runtimes.base import Runner, native_output_silenced, pt2e_calibrated, register_runtime

__all__ = ["PteRunner", "export_pte", "export_pte_int8", "io_details"]


def _set_threads(threads: int) -> None:
    """Opt-in only: ``COMPRESS_EXECUTORCH_THREADS=1`` resizes XNNPACK's process-wide threadpool.

    ExecuTorch's pybindings have one threadpool per process (as many threads as cores) and only an
    ``_unsafe_reset_threadpool`` to resize it. Measured with executorch 1.5.1 and torch 2.13.0: after
    torch had trained a model in the same process, a reset made the next ``execute`` hang (pytest) or
    segfault (``compress run``). So by default the pool is left alone and every ``.pte`` timing uses
    all cores; the report says so (``threads_used``).
    """
    if os.environ.get("COMPRESS_EXECUTORCH_THREADS") != "1":
        return
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count, _unsafe_reset_threadpool

    want = threads or os.cpu_count() or 1
    if _threadpool_get_thread_count() != want:
        _unsafe_reset_threadpool(want)


@register_runtime("executorch", suffixes=(".pte",), module="executorch", extra="executorch")
class PteRunner(Runner):
    """One ExecuTorch program's ``forward`` method, run by the pybind runtime."""

    def __init__(self, path, threads: int = 1):
        super().__init__(path)
        import torch
        from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count
        from executorch.runtime import Runtime

        self._torch = torch
        with native_output_silenced():
            self.method = Runtime.get().load_program(str(self.path)).load_method("forward")
            _set_threads(threads)
        self.threads_used = int(_threadpool_get_thread_count())  # XNNPACK's process-wide pool
        sizes = tuple(int(d) for d in self.method.metadata.input_tensor_meta(0).sizes())
        self.static_batch, self.input_shape = sizes[0], sizes[1:]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.method.execute([self._torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))])[0].numpy()

    def _call(self, x: np.ndarray):
        t, execute = [self._torch.from_numpy(x)], self.method.execute
        return lambda: execute(t)


# ExecuTorch's ScalarType codes (those of torch's c10::ScalarType)
_DTYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64",
           11: "bool", 15: "bfloat16"}


def io_details(path) -> dict[str, list[dict]]:
    """The ``forward`` method's inputs and outputs from the program's metadata: shape and dtype (a ``.pte`` has no
    tensor names: the inputs and outputs are positional). The 8-bit files compress writes take and give float32
    (they quantize inside the program), so there is no scale or zero point to apply."""
    from executorch.runtime import Runtime

    with native_output_silenced():
        meta = Runtime.get().load_program(str(path)).load_method("forward").metadata

    def row(t, i):
        code = int(t.dtype())
        return {"name": None, "index": i, "shape": [int(d) for d in t.sizes()], "dtype": _DTYPES.get(code, f"code {code}")}
    return {"inputs": [row(meta.input_tensor_meta(i), i) for i in range(meta.num_inputs())],
            "outputs": [row(meta.output_tensor_meta(i), i) for i in range(meta.num_outputs())]}


def _lower(exported, path: Path) -> Path:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from compress._io import atomic_path

    program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    with atomic_path(path) as tmp:
        tmp.write_bytes(program.buffer)
    return path


def export_pte(model, input_shape: tuple[int, ...], path: Path, batch: int = 1) -> Path:
    """fp32 ``.pte`` at a static ``batch``: torch.export, then every supported op lowered to XNNPACK."""
    import torch

    example = (torch.zeros(batch, *input_shape),)
    with torch.no_grad(), native_output_silenced():
        return _lower(torch.export.export(model.eval(), example), path)


def export_pte_int8(model, input_shape: tuple[int, ...], path: Path, calibration: np.ndarray, batch: int = 1,
                    calib_batch: int = 32) -> Path:
    """8-bit ``.pte``: pt2e with XNNPACKQuantizer (symmetric, per-channel weights, int8 activations).

    ``calibration`` are the samples the observers see (compress passes the same training samples as the
    ONNX INT8 path); the final program is re-exported at ``batch``.
    """
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with torch.no_grad(), native_output_silenced():
        converted = convert_pt2e(pt2e_calibrated(model, input_shape, quantizer, calibration, batch, calib_batch))
        return _lower(torch.export.export(converted, (torch.zeros(batch, *input_shape),)), path)
