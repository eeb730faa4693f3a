"""Hinton et al. 2015, "Distilling the Knowledge in a Neural Network": soft targets with a temperature."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from compress.losses.base import FnTerm, LossConfig, Probe, Term, register_loss

__all__ = ["hinton_kd_loss", "soft_kl", "HintonConfig"]


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch.

    T^2 keeps the soft-loss gradients on the same scale as the hard loss when T changes
    (Hinton et al. 2015, sec. 2: gradients of the soft term scale as 1/T^2).
    """
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                  reduction="batchmean", log_target=True)
    return kl * (t * t)


def hinton_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                   temperature: float, alpha: float) -> torch.Tensor:
    """alpha * CE(student, y) + (1 - alpha) * T^2 * KL(teacher_T || student_T).

    Example:
        >>> s, t, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0])
        >>> round(hinton_kd_loss(s, t, y, temperature=1.0, alpha=0.5).item(), 4)  # 0.5*0.3133 + 0.5*0.4621
        0.3877
    """
    hard = F.cross_entropy(student_logits, targets)
    if alpha >= 1.0:
        return hard
    return alpha * hard + (1.0 - alpha) * soft_kl(student_logits, teacher_logits, temperature)


class HintonConfig(LossConfig):
    """``{kind: hinton}``: alpha * CE + (1 - alpha) * T^2 * KL; unset values come from the stage's keys."""

    kind: Literal["hinton"]
    temperature: float | None = Field(None, gt=0, le=100, description="default: the stage's temperature")
    alpha: float | None = Field(None, ge=0, le=1, description="default: the stage's alpha")


@register_loss(HintonConfig)
def build_hinton(cfg: HintonConfig, probe: Probe) -> Term:
    t = cfg.temperature if cfg.temperature is not None else probe.stage.get("temperature", 4.0)
    a = cfg.alpha if cfg.alpha is not None else probe.stage.get("alpha", 0.5)
    return FnTerm(lambda b: hinton_kd_loss(b.logits, b.teacher_logits, b.targets, t, a))
