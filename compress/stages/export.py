"""``export``: torch -> ONNX with a dynamic batch axis, checked against torch; optionally the ORT mobile format,
ExecuTorch (``.pte``, XNNPACK) and LiteRT (``.tflite``) files, each checked against torch too."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from compress._onnx import convert_to_ort, export_onnx
from compress.artifact import Artifact
from compress.errors import MissingExtraError, StageError
from compress.runtimes import executorch, litert
from compress.stages.base import StageConfig, register_stage

__all__ = ["ExportConfig", "export", "parity", "FORMATS", "installed_formats", "file_metadata"]

Format = Literal["onnx", "ort", "executorch", "litert"]
FORMATS = ("onnx", "ort", "executorch", "litert")
SUFFIX = {"onnx": ".onnx", "ort": ".ort", "executorch": ".pte", "litert": ".tflite"}
# format -> (extra, modules the export and the runner import)
EXTRAS = {"executorch": ("executorch", ("executorch", "torchao")), "litert": ("litert", ("litert_torch", "ai_edge_litert"))}
_WRITERS = {"executorch": (executorch.export_pte, executorch.export_pte_int8),  # format -> (fp32, 8-bit) writer
            "litert": (litert.export_tflite, litert.export_tflite_int8)}


def _missing_module(fmt: str) -> str | None:
    import importlib.util

    return next((m for m in EXTRAS.get(fmt, ("", ()))[1] if importlib.util.find_spec(m) is None), None)


def installed_formats() -> list[str]:
    """The formats whose packages are installed (``format: all``)."""
    return [f for f in FORMATS if _missing_module(f) is None]


class ExportConfig(StageConfig):
    type: Literal["export"]
    format: Format | Literal["all"] | list[Format] = Field(
        "onnx", description="onnx, ort (ORT mobile format), executorch (.pte), litert (.tflite), a list, or all "
                            "(every format whose runtime is installed); ONNX is always written")
    batch: int = Field(1, ge=1, le=4096, description="the static batch of .pte and .tflite files (they accept only this batch)")
    opset: int = Field(17, ge=13, le=23)
    exporter: Literal["torchscript", "dynamo"] = Field("torchscript", description="dynamo needs compress[dynamo]")
    tolerance: float = Field(1e-4, gt=0, description="max abs difference of logits between torch and onnxruntime")

    @property
    def formats(self) -> list[str]:
        if self.format == "all":
            return installed_formats()
        return [self.format] if isinstance(self.format, str) else list(dict.fromkeys(self.format))

    @model_validator(mode="after")
    def _extras_installed(self):
        for fmt in self.formats:
            missing = _missing_module(fmt)
            if missing:
                raise ValueError(str(MissingExtraError(f"format '{fmt}'", EXTRAS[fmt][0], missing)))
        return self


def parity(model: torch.nn.Module, path, x: np.ndarray) -> float:
    """Max abs difference of logits between torch and the file's own runtime (onnxruntime for .onnx and .ort) on
    ``x`` (held-out val samples)."""
    from compress.runtimes import load

    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    return float(np.abs(ref - load(path, threads=1).predict(x)).max())


@register_stage(ExportConfig, accepts={"torch"}, produces="onnx")
def export(art: Artifact, cfg: ExportConfig, ctx) -> Artifact:
    path = export_onnx(art.model, ctx.splits.input_shape, ctx.stage_path("export", ".onnx"), cfg.opset, cfg.exporter,
                       metadata=file_metadata(ctx))
    x = np.ascontiguousarray(ctx.splits.val.x[:256])
    diff = parity(art.model, path, x)
    if not diff <= cfg.tolerance:
        raise StageError(f"export: onnxruntime's logits differ from torch's by {diff:.3g} (tolerance {cfg.tolerance}); "
                         f"the exported file {path} is not trustworthy")
    info = {"parity_max_abs_diff": diff, "opset": cfg.opset, "exporter": cfg.exporter, "formats": cfg.formats}
    files: dict[str, str] = {}
    if "ort" in cfg.formats:
        ort_path = convert_to_ort(path, path.with_suffix(".ort"))
        info["ort_path"] = files["ort"] = str(ort_path)
        info["ort_parity_max_abs_diff"] = parity(art.model, ort_path, x)
    for fmt in (f for f in ("executorch", "litert") if f in cfg.formats):  # (ExportConfig checked their packages)
        out = ctx.stage_path("export", SUFFIX[fmt])
        write_runtime_file(fmt, art.model, ctx.splits.input_shape, out, cfg.batch)
        d = parity(art.model, out, x)
        if not d <= cfg.tolerance:
            raise StageError(f"export: {fmt} logits differ from torch's by {d:.3g} (tolerance {cfg.tolerance}); "
                             f"the file {out} is not trustworthy")
        files[fmt] = str(out)
        info[f"{fmt}_parity_max_abs_diff"] = d
        info["static_batch"] = cfg.batch
    if files:
        info["files"] = files
    # With .pte/.tflite files the torch model travels on: quantize makes their 8-bit versions from it
    # (pt2e quantizes the torch module, not the ONNX graph).
    keep = art.model if {"executorch", "litert"} & set(cfg.formats) else None
    return art.derive("export", format="onnx", model=keep, path=path, info=info)


def file_metadata(ctx) -> dict[str, str]:
    """The preprocessing and class names as ONNX ``metadata_props`` (compress/preprocess.py); the ``.ort`` file
    converted from the ONNX file keeps them."""
    from compress.preprocess import onnx_metadata, preprocessing

    return onnx_metadata(preprocessing(ctx.recipe, ctx.splits))


def write_runtime_file(fmt: str, model: torch.nn.Module, input_shape, path, batch: int = 1, calibration=None):
    """Write ``model`` as an ExecuTorch or LiteRT file at a static ``batch``; 8-bit when ``calibration`` is given."""
    fp32, int8 = _WRITERS[fmt]
    try:
        if calibration is None:
            return fp32(model, tuple(input_shape), path, batch=batch)
        return int8(model, tuple(input_shape), path, calibration, batch=batch)
    except Exception as exc:
        kind = "8-bit " if calibration is not None else ""
        raise StageError(f"{kind}{fmt} export failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
