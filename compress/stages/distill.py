"""``distill``: train the student on the teacher's soft targets (Hinton KD) plus the hard labels."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compress.artifact import Artifact
from compress.losses import hinton_kd_loss
from compress.stages.base import StageConfig, register_stage
from compress.training import fit

__all__ = ["DistillConfig", "distill", "kd_loss_fn"]


class DistillConfig(StageConfig):
    type: Literal["distill"]
    temperature: float = Field(4.0, gt=0, le=100, description="softens both distributions; 1 = plain softmax")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the hard-label loss; 1 - alpha goes to the soft loss")
    epochs: int = Field(30, ge=1, le=10_000)
    lr: float = Field(3e-3, gt=0, le=10, description="Adam; 3e-3 beat 1e-3 for small students on digits (measured)")
    batch_size: int = Field(64, ge=1, le=65_536)
    weight_decay: float = Field(0.0, ge=0)


def kd_loss_fn(ctx, temperature: float, alpha: float):
    """Loss over a batch given by sample indices; teacher logits come from the context's cache."""
    teacher = ctx.teacher_logits("train")

    def loss(logits, targets, idx):
        return hinton_kd_loss(logits, teacher[idx], targets, temperature, alpha)

    return loss


@register_stage(DistillConfig, accepts={"torch"}, produces="torch", trains=True)
def distill(art: Artifact, cfg: DistillConfig, ctx) -> Artifact:
    res = fit(art.model, ctx.splits, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
              weight_decay=cfg.weight_decay, seed=ctx.recipe.seed + ctx.stage_index,
              loss_fn=kd_loss_fn(ctx, cfg.temperature, cfg.alpha), desc="distill", quiet=ctx.quiet)
    return art.derive("distill", model=res.model,
                      info={"best_epoch": res.best_epoch, "val_accuracy": res.best_val_accuracy, "seconds": res.seconds})
