"""``distill`` for language models: token-level KD (Hinton et al. 2015 at every position), sequence-level KD
(Kim & Rush 2016: CE on the teacher's continuations) or both, on a step budget; an optional progressive
``chain`` of assistants (Mirzadeh et al. 2020), each distilled by this stage's settings."""

from __future__ import annotations

import copy
from typing import Literal

import torch
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from compress.artifact import Artifact
from compress.cache import cache_key
from compress.lm.spec import LMModelSpec, build_lm, params
from compress.stages.base import LMTrainConfig, StageConfig, register_stage

__all__ = ["LMDistillConfig", "SequenceConfig", "LMTrainKeys"]


class LMTrainKeys(LMTrainConfig, StageConfig):
    """A step budget: ``steps`` optimizer steps of ``batch_size`` random context windows."""


class SequenceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    samples: int = Field(512, ge=1, le=1_000_000, description="teacher continuations generated (cached on disk)")
    prompt: int = Field(16, ge=1, le=8192, description="prompt bytes from the training split")
    temperature: float = Field(0.0, ge=0, le=10, description="0 = greedy; else sampled at this temperature")


class LMDistillConfig(LMTrainKeys):
    type: Literal["distill"]
    level: Literal["token", "sequence", "both"] = Field("token", description="token: KL at every position; sequence: "
                                                        "CE on teacher continuations; both: half of each batch each way")
    temperature: float = Field(2.0, gt=0, le=100)
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the CE on the real next byte; 1 - alpha: T^2 * KL")
    sequence: SequenceConfig = SequenceConfig()
    chain: list[LMModelSpec] = Field(
        default_factory=list, validation_alias=AliasChoices("chain", "assistants"),
        description="progressive / teacher-assistant chain, largest first, as on the vision distill stage: the "
                    "teacher teaches chain[0] by this stage's settings, each step the next, the last the student")


def distill_into(ctx, what: str, model, tutor, tutor_key: str, key: str, cfg) -> tuple[torch.nn.Module, dict]:
    """Train ``model`` (in place) from ``tutor`` by ``cfg`` (token KD, its sequences, or both)."""
    seq, seq_info = None, None
    if cfg.level != "token":
        seq, seq_info = ctx.sequences(tutor, tutor_key, cfg.sequence)
    model, info = ctx.train(what, model, key, cfg, teacher=tutor, temperature=cfg.temperature,
                            alpha=cfg.alpha, sequences=seq, prompt_len=cfg.sequence.prompt, level=cfg.level)
    return model, {**info, **({"sequence_data": seq_info} if seq_info else {})}


def check(cfg: LMDistillConfig, ctx) -> None:
    context = ctx.recipe.teacher.model.context
    if cfg.level != "token" and cfg.sequence.prompt >= context:
        raise ctx.error(f"prompt ({cfg.sequence.prompt}) must be shorter than the context ({context})", "sequence", "prompt")


@register_stage(LMDistillConfig, accepts={"torch"}, produces="torch", trains=True, tasks=("lm",), check=check)
def distill(art: Artifact, cfg: LMDistillConfig, ctx) -> Artifact:
    tutor, tutor_key, chain, made = ctx.teacher, ctx.teacher_key, [], []
    for j, spec in enumerate(cfg.chain):  # teacher -> chain[0] -> ... -> the student
        torch.manual_seed(ctx.recipe.seed + 100 + j)
        name = f"assistant{j}"
        step, info = distill_into(ctx, f"{name} distill", build_lm(spec), tutor, tutor_key,
                                  cache_key("lm-chain", ctx.stage_key, j), cfg)
        made.append((name, step))
        chain.append({"model": name, **info})
        tutor, tutor_key = step, cache_key("chain-id", ctx.stage_key, j)
    model, info = distill_into(ctx, f"{ctx.label} distill", copy.deepcopy(art.model), tutor, tutor_key,
                               cache_key("lm-distill", ctx.stage_key), cfg)
    return art.derive("distill", model=model, params=params(model), info={**info, **({"chain": chain} if chain else {})},
                      extra=tuple(made))
