"""``export``: torch -> ONNX with a dynamic batch axis, checked against torch; optionally the ORT mobile format."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from compress._onnx import convert_to_ort, export_onnx
from compress.artifact import Artifact
from compress.errors import StageError
from compress.stages.base import StageConfig, register_stage

__all__ = ["ExportConfig", "export", "parity"]

Format = Literal["onnx", "ort"]


class ExportConfig(StageConfig):
    type: Literal["export"]
    format: Format | list[Format] = Field("onnx", description="onnx, ort (ORT mobile format, implies onnx), or a list")
    opset: int = Field(17, ge=13, le=23)
    exporter: Literal["torchscript", "dynamo"] = Field("torchscript", description="dynamo needs compress[dynamo]")
    tolerance: float = Field(1e-4, gt=0, description="max abs difference of logits between torch and onnxruntime")

    @property
    def formats(self) -> list[str]:
        return [self.format] if isinstance(self.format, str) else list(dict.fromkeys(self.format))


def parity(model: torch.nn.Module, path, x: np.ndarray) -> float:
    """Max abs difference of logits between torch and onnxruntime on ``x`` (held-out val samples)."""
    from compress.runtimes.onnxruntime import session

    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    sess = session(path, threads=1)
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return float(np.abs(ref - got).max())


@register_stage(ExportConfig, accepts={"torch"}, produces="onnx")
def export(art: Artifact, cfg: ExportConfig, ctx) -> Artifact:
    path = export_onnx(art.model, ctx.splits.input_shape, ctx.stage_path("export", ".onnx"), cfg.opset, cfg.exporter)
    x = np.ascontiguousarray(ctx.splits.val.x[:256])
    diff = parity(art.model, path, x)
    if not diff <= cfg.tolerance:
        raise StageError(f"export: onnxruntime's logits differ from torch's by {diff:.3g} (tolerance {cfg.tolerance}); "
                         f"the exported file {path} is not trustworthy")
    info = {"parity_max_abs_diff": diff, "opset": cfg.opset, "exporter": cfg.exporter, "formats": cfg.formats}
    if "ort" in cfg.formats:
        ort_path = convert_to_ort(path, path.with_suffix(".ort"))
        info["ort_path"] = str(ort_path)
        info["ort_parity_max_abs_diff"] = parity(art.model, ort_path, x)
    return art.derive("export", format="onnx", model=None, path=path, info=info)
