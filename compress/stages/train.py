"""``train``: supervised training on hard labels (also how a teacher without weights is made)."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import Field

from compress import training
from compress.artifact import Artifact
from compress.stages.base import StageConfig, TrainConfig, register_stage

__all__ = ["Schedule", "TrainStageConfig", "train"]


class Schedule(TrainConfig, StageConfig):
    """The training schedule of every stage that trains (train, distill, finetune, qat); each sets its defaults."""

    lr: float = Field(3e-3, gt=0, le=10, description="Adam; 3e-3 beat 1e-3 for small students on digits (measured)")

    def fit(self, model, ctx, desc: str, seed_offset: int = 0, **kwargs):
        """``compress.training.fit`` of ``model`` on this schedule, seeded by the recipe and the stage's position."""
        return training.fit(model, ctx.splits, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                            weight_decay=self.weight_decay, seed=ctx.recipe.seed + ctx.stage_index + seed_offset,
                            desc=desc, quiet=ctx.quiet, **kwargs)


class TrainStageConfig(Schedule):
    type: Literal["train"]


def cross_entropy(logits, targets, _idx):
    return F.cross_entropy(logits, targets)


@register_stage(TrainStageConfig, accepts={"torch"}, produces="torch", trains=True)
def train(art: Artifact, cfg: TrainStageConfig, ctx) -> Artifact:
    res = cfg.fit(art.model, ctx, "train", loss_fn=cross_entropy)
    return art.derive("train", model=res.model, info=res.info)
