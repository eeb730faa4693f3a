"""``prune`` for language models: whole attention heads and MLP hidden units of the built-in GPT, by weight norm.

Own slicing rather than torch-pruning: a head is a block of ``head_dim`` rows of q, k and v and the same columns
of o, a hidden unit is a row of fc and a column of proj. Slicing those and building a GPT with per-layer
``layer_heads`` / ``layer_hidden`` keeps the model a plain GPT (same code for training, the KV cache and ONNX
export), and the result is exact: no mask, no zeroed weights."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from compress.artifact import Artifact
from compress.lm.model import GPT, GPTConfig
from compress.lm.spec import params
from compress.stages.base import StageConfig, register_stage

__all__ = ["LMPruneConfig", "prune_gpt", "head_scores", "hidden_scores"]


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


def _norm(w: torch.Tensor, dims, p: int) -> torch.Tensor:
    return w.abs().sum(dims) if p == 1 else w.pow(2).sum(dims)


def head_scores(model: GPT, layer: int, p: int = 2) -> torch.Tensor:
    """One score per head: the (squared, for l2) norm of its q/k/v rows and o columns."""
    a = model.blocks[layer].attn
    h, d = a.heads, a.dim
    s = sum(_norm(lin.weight.view(h, d, -1), (1, 2), p) for lin in (a.q, a.k, a.v))
    return s + _norm(a.o.weight.view(-1, h, d), (0, 2), p)


def hidden_scores(model: GPT, layer: int, p: int = 2) -> torch.Tensor:
    m = model.blocks[layer].mlp
    return _norm(m.fc.weight, 1, p) + _norm(m.proj.weight, 0, p)


def _keep(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    n = max(1, round(len(scores) * (1 - ratio)))
    return scores.topk(n).indices.sort().values


@torch.no_grad()
def prune_gpt(model: GPT, heads: float, mlp: float, importance: str = "l2") -> tuple[GPT, list[dict]]:
    """A new, smaller GPT without the lowest-scoring ``heads`` fraction of heads and ``mlp`` fraction of
    hidden units in every layer; returns it and one row per layer (kept / total)."""
    p = 1 if importance == "l1" else 2
    cfg = model.cfg
    keep_h = [_keep(head_scores(model, i, p), heads) if heads else torch.arange(cfg.heads_of(i)) for i in range(cfg.layers)]
    keep_m = [_keep(hidden_scores(model, i, p), mlp) if mlp else torch.arange(cfg.hidden_of(i)) for i in range(cfg.layers)]
    new_cfg = GPTConfig(**{**cfg.__dict__, "head_dim": cfg.dim, "layer_heads": tuple(len(k) for k in keep_h),
                           "layer_hidden": tuple(len(k) for k in keep_m)})
    state = dict(model.state_dict())
    rows = []
    for i in range(cfg.layers):
        d = cfg.dim
        idx = (keep_h[i][:, None] * d + torch.arange(d)).reshape(-1)  # head -> its rows
        k = keep_m[i]
        for name, keep in (("attn.q", idx), ("attn.k", idx), ("attn.v", idx), ("mlp.fc", k)):  # output rows
            for p in ("weight", "bias"):
                state[f"blocks.{i}.{name}.{p}"] = state[f"blocks.{i}.{name}.{p}"][keep]
        for name, keep in (("attn.o", idx), ("mlp.proj", k)):  # input columns
            state[f"blocks.{i}.{name}.weight"] = state[f"blocks.{i}.{name}.weight"][:, keep]
        rows.append([i, f"{len(keep_h[i])}/{cfg.heads_of(i)}", f"{len(k)}/{cfg.hidden_of(i)}"])
    pruned = GPT(new_cfg)
    pruned.load_state_dict({k: v.clone() for k, v in state.items()})
    return pruned.eval(), rows


def check(cfg: LMPruneConfig, ctx) -> None:
    """Prune slices the built-in GPT; the models it runs on (the student, every top-level assistant) must be one."""
    r = ctx.recipe
    for name, spec in [("student", r.student.model), *[(f"assistants[{i}]", a.model) for i, a in enumerate(r.assistants)]]:
        if spec.hf is not None:
            raise ctx.error(f"stage 'prune' slices heads and MLP units of the built-in GPT; {name} is an hf model, "
                            "which prune does not handle (use arch: gpt or drop the prune stage)")


@register_stage(LMPruneConfig, accepts={"torch"}, produces="torch", tasks=("lm",), check=check)
def prune(art: Artifact, cfg: LMPruneConfig, ctx) -> Artifact:
    model, rows = prune_gpt(art.model, cfg.heads, cfg.mlp, cfg.importance)
    return art.derive("prune", model=model, params=params(model), info={
        "params_before": params(art.model), "params_after": params(model),
        "tables": [{"title": f"{ctx.label}: heads and MLP hidden units kept per layer",
                    "columns": ["layer", "heads", "mlp hidden"], "rows": rows}]})
