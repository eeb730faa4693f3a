"""BatchNorm statistics that match the weights: find stale running statistics and re-estimate them.

A network trains on batch statistics but is selected, exported and measured with its running
estimates. With a small momentum (torchvision's MobileNetV3 and EfficientNet use 0.01) a few hundred
steps leave those estimates near their initial values (mean 0, variance 1): the eval-mode model then
scores at chance although its training loss is low (measured on a MobileNetV3 student: 10.00 % in eval
mode, 64-67 % once recalibrated, same weights). So before a model is selected, exported or measured,
its statistics are checked and, when stale, re-estimated on training batches (never val or test).

Stale means either of:
- a BatchNorm layer's momentum is below PyTorch's default (0.1): its estimates lag the weights;
- on a training batch of CHECK_SAMPLES samples, eval-mode predictions disagree with predictions made
  with that batch's own statistics on more than DISAGREEMENT of the samples. Healthy networks agree on
  nearly every sample (the digits CNNs here: 0-2 %); stale ones on about chance level.
The check puts BatchNorm in train mode (which updates its statistics) and then restores every statistic
and mode exactly, so it changes nothing.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

__all__ = ["DEFAULT_MOMENTUM", "DISAGREEMENT", "CHECK_SAMPLES", "RECAL_SAMPLES", "batchnorms", "staleness",
           "recalibrate", "recalibrate_", "restore", "fresh"]

DEFAULT_MOMENTUM = 0.1  # PyTorch's BatchNorm default
DISAGREEMENT = 0.10  # fraction of a training batch: eval-mode vs batch-statistics predictions
CHECK_SAMPLES = 256
RECAL_SAMPLES = 2048  # training samples the running statistics are re-estimated from (all, when fewer)
RECAL_BATCH = 64


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _rows(n: int, k: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(k, n), replace=False))


def _snapshot(model: nn.Module) -> tuple[list, list]:
    """Every module's train/eval flag and every BatchNorm's statistics and momentum, to restore exactly."""
    stats = [(m, m.running_mean.clone(), m.running_var.clone(),
              None if m.num_batches_tracked is None else m.num_batches_tracked.clone(), m.momentum)
             for m in batchnorms(model)]
    return [(mod, mod.training) for mod in model.modules()], stats


@torch.no_grad()
def restore(model: nn.Module, snapshot: tuple[list, list]) -> None:
    modes, stats = snapshot
    for m, mean, var, tracked, momentum in stats:
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        if tracked is not None:
            m.num_batches_tracked.copy_(tracked)
        m.momentum = momentum
    for mod, training in modes:
        mod.training = training


def staleness(model: nn.Module, x, seed: int = 0) -> str | None:
    """Why ``model``'s BatchNorm running statistics are stale (a sentence), or None when they are not (see the
    module docstring). ``x``: training inputs (an array or memory-mapped rows), CHECK_SAMPLES of them drawn."""
    bns = batchnorms(model)
    if not bns:
        return None
    low = sorted({m.momentum for m in bns if m.momentum is not None and m.momentum < DEFAULT_MOMENTUM})
    if low:
        return (f"BatchNorm momentum {low[0]:g} is below PyTorch's default {DEFAULT_MOMENTUM:g}, so the running "
                "statistics lag the weights")
    xb = torch.from_numpy(np.ascontiguousarray(x[_rows(len(x), CHECK_SAMPLES, seed)]))
    snapshot = _snapshot(model)
    try:
        with torch.no_grad():
            model.eval()
            eval_pred = model(xb).argmax(1)
            for m in bns:
                m.train()  # the batch's own statistics; dropout and the rest stay in eval mode
            batch_pred = model(xb).argmax(1)
    finally:
        restore(model, snapshot)
    frac = float((eval_pred != batch_pred).float().mean())
    if frac > DISAGREEMENT:
        return (f"eval-mode predictions disagree with the batch-statistics ones on {frac:.0%} of {len(xb)} training "
                f"samples (threshold {DISAGREEMENT:.0%})")
    return None


@torch.no_grad()
def accumulate(model: nn.Module, batches) -> None:
    """In place: every BatchNorm's running statistics reset and re-estimated as the cumulative average over
    ``batches`` (input tensors); only BatchNorm in train mode, so dropout is off; weights untouched; each layer's
    momentum kept. Leaves the model in eval mode."""
    bns = batchnorms(model)
    momenta = [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for xb in batches:
        model(xb)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    model.eval()


def recalibrate_(model: nn.Module, x, seed: int = 0, samples: int = RECAL_SAMPLES) -> tuple[list, list]:
    """In place: ``accumulate`` over ``samples`` training rows in batches of RECAL_BATCH; returns the snapshot
    ``restore`` undoes it with."""
    snapshot = _snapshot(model)
    rows = _rows(len(x), samples, seed)
    np.random.default_rng(seed + 1).shuffle(rows)  # mixed classes per batch, as in training
    batches = (np.sort(rows[i:i + RECAL_BATCH]) for i in range(0, len(rows), RECAL_BATCH))
    accumulate(model, (torch.from_numpy(np.ascontiguousarray(x[idx])) for idx in batches if len(idx) >= 2))
    return snapshot


def recalibrate(model: nn.Module, x, seed: int = 0, samples: int = RECAL_SAMPLES) -> nn.Module:
    """A recalibrated copy of ``model`` (``recalibrate_`` on a deep copy)."""
    model = copy.deepcopy(model)
    recalibrate_(model, x, seed, samples)
    return model


def fresh(model: nn.Module, x, seed: int = 0) -> tuple[nn.Module, str | None]:
    """``(model, None)`` when its statistics are fine, else ``(recalibrated copy, why it was stale)``."""
    why = staleness(model, x, seed)
    return (recalibrate(model, x, seed), why) if why else (model, None)
