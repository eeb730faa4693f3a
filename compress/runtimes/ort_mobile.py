"""The ORT mobile format (``.ort``): onnxruntime's flatbuffer format for its mobile and minimal builds.

Files come from ``compress._onnx.convert_to_ort``; here they are loaded and timed with the same CPU
session as ``.onnx`` files, and ``mobile_usability`` gives onnxruntime's verdict on whether NNAPI
(Android) or CoreML (iOS) could take the graph (``onnxruntime.tools.check_onnx_model_mobile_usability``).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

from compress.runtimes.base import register_runtime
from compress.runtimes.onnxruntime import OrtRunner

__all__ = ["load", "mobile_usability"]


load = register_runtime("ort-mobile", suffixes=(".ort",))(OrtRunner)  # onnxruntime's CPU execution provider


def mobile_usability(onnx_path: str | Path) -> dict:
    """onnxruntime's usability check of an ONNX file for ORT Mobile's NNAPI and CoreML execution providers.

    Returns ``{ep: {"verdict": YES|MAYBE|NO, "supported_nodes", "nodes", "partitions", "unsupported_ops",
    "verdict_if_fixed_shapes"}}`` for NNAPI, CoreML NeuralNetwork and CoreML MLProgram, plus ``try_eps``:
    the tool's overall answer (True when one of them may beat the CPU EP). Partitions > 1 mean copies
    between the accelerator and the CPU, which the tool counts against the EP.
    """
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    checks = {
        "nnapi": uc.check_nnapi_partitions,
        "coreml_neuralnetwork": lambda m, fixed: uc.check_coreml_partitions(m, fixed, "coreml_supported_neuralnetwork_ops.md"),
        "coreml_mlprogram": lambda m, fixed: uc.check_coreml_partitions(m, fixed, "coreml_supported_mlprogram_ops.md"),
    }
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        opt = Path(tmp) / "model.onnx"
        optimize_model(Path(onnx_path), opt, use_external_initializers=True)  # as the tool does: BASIC level first
        model = ModelProtoWithShapeInfo(opt).model_with_shape_info
        dynamic_inputs, _ = uc.check_shapes(model.graph)
        for ep, check in checks.items():
            info = check(model, True)
            entry = {"verdict": info.suitability().name, "supported_nodes": info.num_supported_nodes,
                     "nodes": info.num_nodes, "partitions": info.num_partitions,
                     "unsupported_ops": sorted(info.unsupported_ops)}
            if dynamic_inputs:
                entry["verdict_if_fixed_shapes"] = check(model, False).suitability().name
            out[ep] = entry
    out["dynamic_inputs"] = bool(dynamic_inputs)
    out["try_eps"] = any(out[ep]["verdict"] != "NO" or out[ep].get("verdict_if_fixed_shapes", "NO") != "NO" for ep in checks)
    return out
