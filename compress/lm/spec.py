"""A language model in a recipe: the built-in byte-level GPT (``arch: gpt``) or a local Hugging Face folder (``hf:``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["LMModelSpec", "build_lm", "describe_lm", "params"]


class LMModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    arch: Literal["gpt"] | None = Field(None, description="built-in decoder")
    width: int = Field(128, ge=8, le=8192)
    layers: int = Field(2, ge=1, le=64)
    heads: int = Field(4, ge=1, le=128)
    context: int = Field(128, ge=8, le=8192)
    hf: Path | None = Field(None, description="a local Hugging Face causal-LM folder (save_pretrained, safetensors) "
                                              "with a 256-byte vocabulary (compress[hf])")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.arch is None) == (self.hf is None):
            raise ValueError("give exactly one of 'arch: gpt' (built in) or 'hf: path/to/folder'")
        shape = sorted({"width", "layers", "heads"} & self.model_fields_set)
        if self.hf is not None and shape:
            raise ValueError(f"{', '.join(shape)} come from the folder's config.json with 'hf:'; keep only "
                             "'hf' and 'context' (the window length)")
        if self.arch and self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        return self


def build_lm(spec: LMModelSpec) -> torch.nn.Module:
    """The built-in GPT (fresh, from the global seed) or a Hugging Face folder's model (its weights)."""
    if spec.hf is not None:
        from compress.lm.hf import load_hf

        return load_hf(spec.hf, spec.context)
    from compress.lm.model import GPT, GPTConfig

    return GPT(GPTConfig(width=spec.width, layers=spec.layers, heads=spec.heads, context=spec.context))


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe_lm(spec: LMModelSpec, m: torch.nn.Module) -> str:
    if spec.hf is not None:
        return f"hf {spec.hf} ({m.cfg.model_type}), {m.cfg.layers} layers, context {spec.context}: {params(m):,} parameters"
    return (f"gpt width {spec.width}, {spec.layers} layers, {spec.heads} heads, context {spec.context}: "
            f"{params(m):,} parameters")
