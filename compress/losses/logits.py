"""Response-based variants on the logits alone: ``kl`` (soft term only), ``mse`` (logit matching), ``ce`` (labels).

``kl`` is Hinton's soft term without the hard-label part; ``mse`` regresses the student's logits on the
teacher's (Ba & Caruana 2014, "Do Deep Nets Really Need to be Deep?"); ``ce`` is plain cross-entropy on
the labels, for combining with feature or relation terms that have no label term of their own.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import Field

from compress.losses.base import FnTerm, LossConfig, Probe, Term, register_loss
from compress.losses.hinton import soft_kl

__all__ = ["KLConfig", "MSEConfig", "CEConfig"]


class KLConfig(LossConfig):
    """``{kind: kl}``: T^2 * KL(softmax(t/T) || softmax(s/T)); no label term."""

    kind: Literal["kl"]
    temperature: float | None = Field(None, gt=0, le=100, description="default: the stage's temperature")


class MSEConfig(LossConfig):
    """``{kind: mse}``: mean squared difference of the raw logits; no label term."""

    kind: Literal["mse"]


class CEConfig(LossConfig):
    """``{kind: ce}``: cross-entropy on the hard labels (no teacher)."""

    kind: Literal["ce"]


@register_loss(KLConfig)
def build_kl(cfg: KLConfig, probe: Probe) -> Term:
    t = cfg.temperature if cfg.temperature is not None else probe.stage.get("temperature", 4.0)
    return FnTerm(lambda b: soft_kl(b.logits, b.teacher_logits, t))


@register_loss(MSEConfig)
def build_mse(cfg: MSEConfig, probe: Probe) -> Term:
    return FnTerm(lambda b: F.mse_loss(b.logits, b.teacher_logits))  # mean over batch and classes of (s - t)^2


@register_loss(CEConfig)
def build_ce(cfg: CEConfig, probe: Probe) -> Term:
    return FnTerm(lambda b: F.cross_entropy(b.logits, b.targets), needs_teacher=False)
