"""``distill``: train the student on the teacher's soft targets (Hinton KD) plus the hard labels.

``loss: [...]`` replaces the default with any sum of registered losses (``compress/losses/``), e.g.
``[{kind: hinton}, {kind: hint, weight: 0.5, pairs: [{teacher: features.5, student: features.5}]}]``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import Field

from compress.artifact import Artifact
from compress.losses import hinton_kd_loss
from compress.losses.combine import Objective, build_terms, loss_union
from compress.stages.base import StageConfig, register_stage
from compress.training import fit

__all__ = ["DistillConfig", "distill", "kd_loss_fn", "LossList", "loss_fit_kwargs"]

LossList = list[loss_union()]  # type: ignore[misc]


class DistillConfig(StageConfig):
    type: Literal["distill"]
    temperature: float = Field(4.0, gt=0, le=100, description="softens both distributions; 1 = plain softmax")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the hard-label loss; 1 - alpha goes to the soft loss")
    epochs: int = Field(30, ge=1, le=10_000)
    lr: float = Field(3e-3, gt=0, le=10, description="Adam; 3e-3 beat 1e-3 for small students on digits (measured)")
    batch_size: int = Field(64, ge=1, le=65_536)
    weight_decay: float = Field(0.0, ge=0)
    generations: int = Field(1, ge=1, le=20, description="born-again: generation g + 1 is taught by generation g "
                                                        "(the first by the teacher); the last one is kept")
    loss: LossList | None = Field(None, description="sum of losses by kind; default: Hinton with this stage's "
                                                    "temperature and alpha")


def loss_fit_kwargs(ctx, model, cfg) -> dict:
    """``fit`` keyword arguments for a stage's loss: the Hinton default, or the ``loss`` list's Objective."""
    if cfg.loss is None:
        return {"loss_fn": kd_loss_fn(ctx, cfg.temperature, cfg.alpha)}
    terms = build_terms(cfg.loss, ctx.teacher, model, ctx.splits.input_shape,
                        {"temperature": cfg.temperature, "alpha": cfg.alpha},
                        at=("stages", ctx.stage_index, "loss"), recipe=ctx.recipe)
    obj = Objective(cfg.loss, terms, ctx)
    return {"loss_fn": obj, "extra_params": obj.extra_params(), "attach": obj.attach}


def kd_loss_fn(ctx, temperature: float, alpha: float):
    """Loss over a batch given by sample indices; teacher logits come from the context's cache."""
    teacher = ctx.teacher_logits("train")

    def loss(logits, targets, idx):
        return hinton_kd_loss(logits, teacher[idx], targets, temperature, alpha)

    return loss


@register_stage(DistillConfig, accepts={"torch"}, produces="torch", trains=True)
def distill(art: Artifact, cfg: DistillConfig, ctx) -> Artifact:
    teacher_ctx, generations = ctx, []
    for g in range(cfg.generations):
        # Born-again: every generation starts from the same student initialisation and learns from the one before.
        res = fit(art.model, ctx.splits, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                  weight_decay=cfg.weight_decay, seed=ctx.recipe.seed + ctx.stage_index + 1000 * g,
                  desc="distill" if cfg.generations == 1 else f"distill gen {g + 1}/{cfg.generations}",
                  quiet=ctx.quiet, **loss_fit_kwargs(teacher_ctx, art.model, cfg))
        generations.append({"generation": g + 1, "best_epoch": res.best_epoch, "val_accuracy": res.best_val_accuracy,
                            "seconds": res.seconds})
        teacher_ctx = dataclasses.replace(ctx, teacher=res.model, _teacher_logits={}, _teacher_features={})
    info = {k: v for k, v in generations[-1].items() if k != "generation"}
    if cfg.generations > 1:
        info["generations"] = generations
    return art.derive("distill", model=res.model, info=info)
