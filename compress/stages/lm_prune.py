"""``prune`` for language models: whole attention heads and MLP hidden units of the built-in GPT, by weight norm
(compress.lm.prune: exact slicing, no masks)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from compress.artifact import Artifact
from compress.lm.spec import params
from compress.stages.base import StageConfig, register_stage

__all__ = ["LMPruneConfig"]


class LMPruneConfig(StageConfig):
    type: Literal["prune"]
    heads: float = Field(0.0, ge=0, lt=1, description="fraction of attention heads removed per layer")
    mlp: float = Field(0.0, ge=0, lt=1, description="fraction of MLP hidden units removed per layer")
    importance: Literal["l2", "l1"] = Field("l2", description="weight-norm score of a head / hidden unit")

    @model_validator(mode="after")
    def _something(self):
        if self.heads == 0 and self.mlp == 0:
            raise ValueError("prune needs 'heads' and/or 'mlp' above 0")
        return self


def check(cfg: LMPruneConfig, ctx) -> None:
    """Prune slices the built-in GPT; the models it runs on (the student, every top-level assistant) must be one."""
    r = ctx.recipe
    for name, spec in [("student", r.student.model), *[(f"assistants[{i}]", a.model) for i, a in enumerate(r.assistants)]]:
        if spec.hf is not None:
            raise ctx.error(f"stage 'prune' slices heads and MLP units of the built-in GPT; {name} is an hf model, "
                            "which prune does not handle (use arch: gpt or drop the prune stage)")


@register_stage(LMPruneConfig, accepts={"torch"}, produces="torch", tasks=("lm",), check=check)
def prune(art: Artifact, cfg: LMPruneConfig, ctx) -> Artifact:
    from compress.lm.prune import prune_gpt

    model, rows = prune_gpt(art.model, cfg.heads, cfg.mlp, cfg.importance)
    return art.derive("prune", model=model, params=params(model), info={
        "params_before": params(art.model), "params_after": params(model),
        "tables": [{"title": f"{ctx.label}: heads and MLP hidden units kept per layer",
                    "columns": ["layer", "heads", "mlp hidden"], "rows": rows}]})
