"""``finetune``: recovery training after pruning, with the hard labels alone or, with ``distill: true``,
by any distillation scheme ``distill`` offers (loss list, ensemble / black-box teachers, a chain,
born-again generations, mutual peers)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import Field, model_validator

from compress.artifact import Artifact
from compress.stages.base import register_stage
from compress.stages.distill import KDOptions, augmenter, check_kd, kd_train
from compress.stages.train import cross_entropy

__all__ = ["FinetuneConfig", "finetune"]

_KD_ONLY = ("loss", "teachers", "chain", "generations", "peers")


class FinetuneConfig(KDOptions):
    type: Literal["finetune"]
    epochs: int = Field(10, ge=1, le=10_000)
    lr: float = Field(1e-3, gt=0, le=10, description="a third of the training default: the weights are already good")
    distill: bool = Field(False, description="distil from the teacher (Hinton KD by default) besides the hard labels")

    @model_validator(mode="after")
    def _kd_keys_need_distill(self):
        given = [k for k in _KD_ONLY if k in self.model_fields_set]
        if given and not self.distill:
            raise ValueError(f"{', '.join(repr(k) for k in given)} {'is' if len(given) == 1 else 'are'} used only "
                             "with 'distill: true'; set distill: true or drop "
                             f"{'it' if len(given) == 1 else 'them'}")
        return self

    def student_epochs(self) -> int:
        return super().student_epochs() if self.distill else self.epochs


@register_stage(FinetuneConfig, accepts={"torch"}, produces="torch", trains=True, check=check_kd,
                student_epochs=FinetuneConfig.student_epochs)
def finetune(art: Artifact, cfg: FinetuneConfig, ctx) -> Artifact:
    if cfg.distill:
        out = kd_train(art, cfg, ctx, "finetune")
        return dataclasses.replace(out, info={**out.info, "distill": True})
    res = cfg.fit(art.model, ctx, "finetune", loss_fn=cross_entropy,
                  augment=augmenter(cfg.augment, ctx.splits.input_shape))  # hard labels only, on augmented inputs
    return art.derive("finetune", model=res.model, info={**res.info, "distill": False})
