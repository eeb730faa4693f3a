"""``finetune`` for language models: recover after pruning, with token-level KD from the teacher (or CE only)."""

from __future__ import annotations

import copy
from typing import Literal

from pydantic import Field

from compress.artifact import Artifact
from compress.cache import cache_key
from compress.lm.spec import params
from compress.stages.base import register_stage
from compress.stages.lm_distill import LMTrainKeys

__all__ = ["LMFinetuneConfig"]


class LMFinetuneConfig(LMTrainKeys):
    type: Literal["finetune"]
    steps: int = Field(100, ge=1, le=10_000_000)
    lr: float = Field(1e-3, gt=0, le=10)
    distill: bool = Field(True, description="token-level KD from the teacher (else CE only)")
    temperature: float = Field(2.0, gt=0, le=100)
    alpha: float = Field(0.5, ge=0, le=1)


@register_stage(LMFinetuneConfig, accepts={"torch"}, produces="torch", trains=True, tasks=("lm",))
def finetune(art: Artifact, cfg: LMFinetuneConfig, ctx) -> Artifact:
    model, info = ctx.train(f"{ctx.label} finetune", copy.deepcopy(art.model), cache_key("lm-finetune", ctx.stage_key),
                            cfg, teacher=ctx.teacher if cfg.distill else None, temperature=cfg.temperature,
                            alpha=cfg.alpha)
    return art.derive("finetune", model=model, params=params(model), info=info)
