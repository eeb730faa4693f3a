"""``train``: supervised training on hard labels (also how a teacher without weights is made)."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import Field

from compress.artifact import Artifact
from compress.stages.base import StageConfig, register_stage
from compress.training import fit

__all__ = ["TrainStageConfig", "train"]


class TrainStageConfig(StageConfig):
    type: Literal["train"]
    epochs: int = Field(30, ge=1, le=10_000)
    lr: float = Field(3e-3, gt=0, le=10, description="Adam; 3e-3 beat 1e-3 for small students on digits (measured)")
    batch_size: int = Field(64, ge=1, le=65_536)
    weight_decay: float = Field(0.0, ge=0)


def cross_entropy(logits, targets, _idx):
    return F.cross_entropy(logits, targets)


@register_stage(TrainStageConfig, accepts={"torch"}, produces="torch", trains=True)
def train(art: Artifact, cfg: TrainStageConfig, ctx) -> Artifact:
    res = fit(art.model, ctx.splits, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
              weight_decay=cfg.weight_decay, seed=ctx.recipe.seed + ctx.stage_index, loss_fn=cross_entropy,
              desc="train", quiet=ctx.quiet)
    return art.derive("train", model=res.model, info=res.info)
