"""Attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention").

The spatial attention map of a C x H x W activation A is Q = mean_c(A^2), flattened to H*W values
and L2-normalised. The loss of a pair is the mean over batch and positions of (q_s - q_t)^2, as in
the authors' code (``(at(x) - at(y)).pow(2).mean()``). Channel counts may differ; H x W must match.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from compress.losses.base import LayerError, LossConfig, Probe, Term, register_loss
from compress.losses.hint import HintTerm, LayerPair, pair_shapes

__all__ = ["AttentionConfig", "attention_map", "at_loss"]


class AttentionConfig(LossConfig):
    """``{kind: attention, pairs: [...]}``; weight defaults to 500 = beta/2 with the paper's beta = 1000."""

    kind: Literal["attention"]
    weight: float = Field(500.0, ge=0, description="beta/2 of the paper (beta = 1000): the maps are unit vectors")
    pairs: list[LayerPair] = Field(min_length=1)


def attention_map(a: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W): normalize(mean over channels of a^2)."""
    return F.normalize(a.pow(2).mean(1).flatten(1), dim=1)


def at_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return (attention_map(student) - attention_map(teacher)).pow(2).mean()


class _Attention(HintTerm):
    pair_loss = staticmethod(at_loss)


@register_loss(AttentionConfig)
def build_attention(cfg: AttentionConfig, probe: Probe) -> Term:
    for i, s_shape, t_shape in pair_shapes(cfg.pairs, probe):
        if len(t_shape) not in (2, 3) or len(s_shape) != len(t_shape) or t_shape[1:] != s_shape[1:]:
            raise LayerError(f"attention maps need C x H x W outputs of the same H x W; got student {s_shape} "
                             f"and teacher {t_shape}", ("pairs", i))
    return _Attention(cfg.pairs, [nn.Identity() for _ in cfg.pairs])  # maps of any channel count compare
