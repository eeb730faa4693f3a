"""``finetune``: recovery training after pruning, optionally with KD from the teacher."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from compress.artifact import Artifact
from compress.stages.base import StageConfig, register_stage
from compress.stages.distill import LossList, loss_fit_kwargs
from compress.stages.train import cross_entropy
from compress.training import fit

__all__ = ["FinetuneConfig", "finetune"]


class FinetuneConfig(StageConfig):
    type: Literal["finetune"]
    epochs: int = Field(10, ge=1, le=10_000)
    lr: float = Field(1e-3, gt=0, le=10, description="a third of the training default: the weights are already good")
    batch_size: int = Field(64, ge=1, le=65_536)
    weight_decay: float = Field(0.0, ge=0)
    distill: bool = Field(False, description="add Hinton KD from the teacher to the hard-label loss")
    temperature: float = Field(4.0, gt=0, le=100)
    alpha: float = Field(0.5, ge=0, le=1)
    loss: LossList | None = Field(None, description="with distill: true, a sum of losses by kind (as in distill)")

    @model_validator(mode="after")
    def _loss_needs_distill(self):
        if self.loss is not None and not self.distill:
            raise ValueError("'loss' is used only with 'distill: true'; set distill: true or drop 'loss'")
        return self


@register_stage(FinetuneConfig, accepts={"torch"}, produces="torch", trains=True)
def finetune(art: Artifact, cfg: FinetuneConfig, ctx) -> Artifact:
    loss = loss_fit_kwargs(ctx, art.model, cfg) if cfg.distill else {"loss_fn": cross_entropy}
    res = fit(art.model, ctx.splits, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
              weight_decay=cfg.weight_decay, seed=ctx.recipe.seed + ctx.stage_index,
              desc="finetune", quiet=ctx.quiet, **loss)
    return art.derive("finetune", model=res.model,
                      info={"best_epoch": res.best_epoch, "val_accuracy": res.best_val_accuracy,
                            "seconds": res.seconds, "distill": cfg.distill})
