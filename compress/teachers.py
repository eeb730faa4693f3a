"""Teachers of a distill stage beyond the recipe's: ensembles, user models, and black boxes (``TeacherSource``;
the recipe side: docs/distillation.md, "More teachers").

A ``teachers:`` list on ``distill`` replaces the recipe teacher as the source of soft targets for that stage (the
recipe teacher stays the report's reference): the ``weight``-weighted mean of the members' logits. Only a single
torch teacher has layers, so losses that read layers need the recipe's teacher (checked by ``validate``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from compress.errors import DataError, ModelError
from compress.models.spec import ModelSpec

__all__ = ["TeacherSource", "ensemble_logits", "member_logits"]


class TeacherSource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    weight: float = Field(1.0, gt=0, description="weight of this member in the mean of logits")
    recipe: bool = Field(False, description="the recipe's teacher (also when no other source is given)")
    model: ModelSpec | None = Field(None, description="a built-in or factory model, with weights")
    weights: Path | None = None
    onnx: Path | None = Field(None, description="black box: an ONNX file run with onnxruntime")
    logits: Path | None = Field(None, description="black box: precomputed outputs (.npy, or .npz with 'logits')")
    probabilities: bool = Field(False, description="the logits file holds probabilities")

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("model", "onnx", "logits") if getattr(self, k) is not None] + (["recipe"] if self.recipe else [])
        if len(given) > 1:
            raise ValueError(f"a teacher is one of recipe, model, onnx or logits (got {', '.join(given)})")
        if self.model is not None and self.weights is None:
            raise ValueError("a 'model' teacher needs its 'weights' (only the recipe's teacher is trained by compress)")
        if self.weights is not None and self.model is None:
            raise ValueError("'weights' belongs to a 'model' teacher")
        if self.probabilities and self.logits is None:
            raise ValueError("'probabilities' describes a 'logits' file")
        return self

    @property
    def is_recipe(self) -> bool:
        return self.model is None and self.onnx is None and self.logits is None

    def describe(self) -> str:
        if self.is_recipe:
            return "recipe teacher"
        if self.model is not None:
            return f"model {self.model.arch or self.model.factory} ({self.weights})"
        return f"onnx {self.onnx}" if self.onnx is not None else f"logits {self.logits}"


def _train_rows(arr: np.ndarray, recipe, splits, where: str) -> np.ndarray:
    """A logits file's rows of the training split: it has one per training sample in the split's order, or one per
    sample of the whole data in its original order."""
    n_train = len(splits.train)
    if arr.ndim != 2 or arr.shape[1] != splits.num_classes:
        raise ModelError(f"{where}: expected rows of {splits.num_classes} class scores, got shape {arr.shape}")
    if len(arr) == n_train:
        return arr
    from compress.data import split_rows

    _, y, train_idx, _, _ = split_rows(recipe.data, recipe.seed)
    if len(arr) != len(y):
        raise ModelError(f"{where}: {len(arr)} rows, but the training split has {n_train} samples and the data {len(y)}")
    return arr[train_idx]


def member_logits(src: TeacherSource, ctx, x: np.ndarray | None = None) -> torch.Tensor:
    """Logits of one member on the training split (or on ``x``, for checks)."""
    from compress.context import predict_logits

    x = ctx.splits.train.x if x is None else x
    if src.is_recipe:
        return ctx.teacher_logits("train") if x is ctx.splits.train.x else predict_logits(ctx.teacher, x)
    if src.model is not None:
        from compress.models import build_model, load_weights

        model = build_model(src.model, ctx.splits.input_shape, ctx.splits.num_classes)
        load_weights(model, src.weights)
        return predict_logits(model, x)
    if src.onnx is not None:
        from compress.runtimes.onnxruntime import load

        if not src.onnx.is_file():
            raise ModelError(f"teacher ONNX file not found: {src.onnx}")
        return torch.from_numpy(load(src.onnx, threads=0).predict(x, batch_size=512).astype(np.float32))
    from compress.data import read_arrays

    try:  # existence, then headers: a forged or compressed-bomb file is refused before it is read
        arr = read_arrays(src.logits, ("logits",))["logits"]
    except DataError as exc:
        raise ModelError(f"teacher logits: {exc}") from None
    arr = _train_rows(np.asarray(arr, dtype=np.float32), ctx.recipe, ctx.splits, str(src.logits))
    if src.probabilities:
        arr = np.log(np.clip(arr, 1e-12, None))  # softmax(log p) = p for rows that sum to 1
    return torch.from_numpy(arr)


def ensemble_logits(sources: list[TeacherSource], ctx) -> torch.Tensor:
    """Weighted mean of the members' training-split logits."""
    total = sum(s.weight for s in sources)
    return sum(s.weight * member_logits(s, ctx) for s in sources) / total
