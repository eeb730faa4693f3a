"""``ModelSpec``: a built-in (zoo) or user-factory model, as a recipe, a chain step or an ensemble member names it.

Its own module (not compress.recipe) so that stages and teacher sources can use it: compress.recipe imports
the stages to build its stage union.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ModelSpec", "ATTENTION_ARCHS"]

ATTENTION_ARCHS = ("transformer", "text_transformer")  # built-in archs with 'heads' and 'patch' keys


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    _needs: ClassVar[str] = "give"  # the start of the one-source error: "give exactly one of 'arch' ..."

    arch: Literal["mlp", "cnn", "transformer", "text_transformer"] | None = Field(None, description="built-in architecture")
    width: int = Field(16, ge=1, le=4096, description="channels (cnn), hidden units (mlp) or token width (transformers)")
    depth: int = Field(2, ge=1, le=16, description="number of conv blocks (cnn), hidden layers (mlp) or blocks (transformers)")
    heads: int | None = Field(None, ge=1, le=64, description="transformers: attention heads (default 4; width must be a multiple)")
    patch: int | None = Field(None, ge=1, le=64, description="transformers: patch side (transformer, default 2 on even images) "
                                                            "or bytes per token (text_transformer, default 1)")
    factory: str | None = Field(None, description="user model as 'package.module:function'")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the factory")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.arch is None) == (self.factory is None):
            raise ValueError(f"{self._needs} exactly one of 'arch' (built-in: mlp, cnn, transformer, text_transformer) "
                             "or 'factory' ('package.module:function')")
        for key in ("heads", "patch"):
            if getattr(self, key) is not None and self.arch not in ATTENTION_ARCHS:
                raise ValueError(f"'{key}' is a key of arch 'transformer' and 'text_transformer' only")
        if self.arch in ATTENTION_ARCHS and self.width % (self.heads or 4):
            raise ValueError(f"arch '{self.arch}': width {self.width} must be a multiple of heads {self.heads or 4}")
        if self.factory is not None and not re.fullmatch(r"[\w.]+:\w+", self.factory):
            raise ValueError(f"factory must look like 'package.module:function' (got {self.factory!r})")
        return self
