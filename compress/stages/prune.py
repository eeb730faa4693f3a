"""``prune``: structured channel pruning with torch-pruning's dependency graph.

Importance (what to remove) comes from torch-pruning's scorers; the MetaPruner removes whole
channels and everything coupled to them (BN, the next layer's inputs); ``iterative_steps`` decides when.
The classifier (every Linear whose outputs are the class logits) is never pruned.
"""

from __future__ import annotations

import copy
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import torch_pruning as tp
from pydantic import Field
from torch import nn

from compress.artifact import Artifact
from compress.stages.base import StageConfig, register_stage

__all__ = ["PruneConfig", "prune", "count_macs_params", "channel_table"]


class PruneConfig(StageConfig):
    type: Literal["prune"]
    ratio: float = Field(gt=0, lt=1, description="fraction of channels removed per layer (of all prunable channels when global)")
    importance: Literal["l1", "l2", "taylor", "bn_scale"] = "l2"
    global_pruning: bool = Field(False, alias="global", description="rank channels across layers instead of per layer")
    iterative_steps: int = Field(1, ge=1, le=100, description="reach the ratio in this many equal steps")
    round_to: int | None = Field(None, ge=1, le=256, description="keep channel counts multiples of this")
    taylor_batches: int = Field(4, ge=1, le=1000, description="taylor: training batches whose gradients score channels")
    bn_recalibration: int = Field(16, ge=0, le=100_000, description="training batches to re-estimate BatchNorm statistics after pruning; 0 = off")


def _importance(name: str):
    if name == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.TaylorImportance()
    return tp.importance.BNScaleImportance()


def count_macs_params(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """Multiply-accumulates and parameters for one sample."""
    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, torch.zeros(1, *input_shape))
    model.train(was_training)
    return int(macs), int(params)


def channel_table(model: nn.Module) -> dict[str, int]:
    """Output channels (conv) or units (linear) per layer, by module name."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d | nn.Conv1d):
            out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[name] = m.out_features
    return out


@register_stage(PruneConfig, accepts={"torch"}, produces="torch")
def prune(art: Artifact, cfg: PruneConfig, ctx) -> Artifact:
    splits = ctx.splits
    model = copy.deepcopy(art.model).eval()
    if cfg.importance == "bn_scale" and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        from compress.errors import StageError
        raise StageError("prune: importance 'bn_scale' needs BatchNorm layers, and this model has none; use l1, l2 or taylor")
    example = torch.zeros(1, *splits.input_shape)
    classifier = output_layers(model, example)
    before = channel_table(model)
    macs0, params0 = count_macs_params(model, splits.input_shape)
    pruner = tp.pruner.MetaPruner(model, example, importance=_importance(cfg.importance), pruning_ratio=cfg.ratio,
                                  global_pruning=cfg.global_pruning, iterative_steps=cfg.iterative_steps,
                                  ignored_layers=classifier, round_to=cfg.round_to)
    rng = np.random.default_rng(ctx.recipe.seed)
    for _ in range(cfg.iterative_steps):
        if cfg.importance == "taylor":
            _accumulate_gradients(model, splits.train, cfg.taylor_batches, rng)
        pruner.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    recalibrated = recalibrate_bn(model, splits.train, cfg.bn_recalibration, rng) if cfg.bn_recalibration else 0
    after = channel_table(model)
    macs1, params1 = count_macs_params(model, splits.input_shape)
    layers = [{"layer": k, "before": before[k], "after": after.get(k)} for k in before]
    info = {"params_before": params0, "params_after": params1, "macs_before": macs0, "macs_after": macs1,
            "bn_recalibration_samples": recalibrated, "layers": layers}
    return art.derive("prune", model=model, params=params1, macs=macs1, info=info)


def output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The layers whose output is the model's output (the classifier), found by tracing one forward pass.

    Matching on ``out_features == num_classes`` would also freeze a hidden layer that happens to be as
    wide as the class count.
    """
    produced: dict[int, nn.Module] = {}
    hooks = [m.register_forward_hook(lambda mod, _i, out: produced.__setitem__(id(out), mod))
             for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d | nn.Conv1d)]
    try:
        with torch.no_grad():
            out = model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    outs = out if isinstance(out, tuple | list) else (out,)
    return [produced[id(o)] for o in outs if id(o) in produced]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data, batches: int, rng, batch_size: int = 64) -> int:
    """Re-estimate BatchNorm running statistics on training batches (weights untouched).

    Removing input channels of a layer shifts the distribution its BN normalises; stale statistics
    cost far more accuracy than the removed channels (measured on digits, 30 % pruning: val accuracy
    0.75 -> 0.95 for the 16-32 CNN after recalibration, before any fine-tuning).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all recalibration batches
    model.train()
    seen = 0
    for _ in range(batches):
        idx = rng.choice(len(data), size=min(batch_size, len(data)), replace=False)
        model(torch.from_numpy(data.x[idx]))
        seen += len(idx)
    model.eval()
    for m, (momentum, _) in zip(bns, saved):
        m.momentum = momentum
    return seen


def _accumulate_gradients(model: nn.Module, data, batches: int, rng, batch_size: int = 64) -> None:
    """Taylor importance scores |w * dL/dw|: fill .grad from a few training batches (train split only)."""
    model.eval()  # BN statistics stay as trained; gradients still flow
    model.zero_grad(set_to_none=True)
    for _ in range(batches):
        idx = rng.choice(len(data), size=min(batch_size, len(data)), replace=False)
        x, y = torch.from_numpy(data.x[idx]), torch.from_numpy(data.y[idx])
        F.cross_entropy(model(x), y).backward()
