"""``export`` for language models: the decoder to ONNX with its key/value cache (``past`` in, ``present`` out),
checked against torch on validation windows, with and without the cache."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.artifact import Artifact
from compress.errors import StageError
from compress.stages.base import StageConfig, register_stage

__all__ = ["LMExportConfig", "export_checked"]


class LMExportConfig(StageConfig):
    type: Literal["export"]
    opset: int = Field(17, ge=14, le=21)
    tolerance: float = Field(1e-3, gt=0, description="max |torch - onnxruntime| logits, with and without the KV cache")


def export_checked(model, path, windows, opset: int = 17, tolerance: float = 1e-3, what: str = "the model") -> dict:
    """Export ``model`` to ``path`` and compare onnxruntime's logits with torch's (full window and KV cache)."""
    from compress.lm import onnx as lmonnx

    lmonnx.export_decoder(model, path, opset)
    par = lmonnx.parity(model, path, windows)
    worst = max(par["max_abs_logits_full"], par["max_abs_logits_kv_cache"])
    if worst > tolerance:
        raise StageError(f"export: onnxruntime logits of {what} differ from torch by {worst:.2e} (tolerance {tolerance})")
    return {**par, "kv_cache": True}


@register_stage(LMExportConfig, accepts={"torch"}, produces="onnx", tasks=("lm",))
def export(art: Artifact, cfg: LMExportConfig, ctx) -> Artifact:
    path = ctx.stage_path("export", ".onnx")
    info = export_checked(art.model, path, ctx.windows("val"), cfg.opset, cfg.tolerance, ctx.label)
    return art.derive("export", format="onnx", path=path, info=info)
