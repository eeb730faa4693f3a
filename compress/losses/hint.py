"""Feature-based KD (FitNets, Romero et al. 2015): match intermediate activations of paired layers.

For each pair, the student's output goes through a learned projector onto the teacher's shape
(a 1x1 convolution for C x H x W maps, a linear layer for vectors; none when shapes already match)
and the loss is the mean squared difference. Projectors train with the student and are not exported.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from compress.losses.base import Batch, LayerError, LossConfig, Probe, Term, register_loss

__all__ = ["LayerPair", "HintConfig", "HintTerm", "make_projector", "pair_shapes"]


class LayerPair(BaseModel):
    """A teacher layer and the student layer that imitates it (names from ``model.named_modules()``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    weight: float = Field(1.0, ge=0, description="weight of this pair inside the term")
    teacher: str = Field(min_length=1)
    student: str = Field(min_length=1)


class HintConfig(LossConfig):
    """``{kind: hint, pairs: [{teacher: features.5, student: features.5}]}``."""

    kind: Literal["hint"]
    pairs: list[LayerPair] = Field(min_length=1)


def make_projector(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], key: tuple) -> nn.Module:
    """Identity when shapes match; 1x1 conv for maps of equal H x W; linear for vectors; else LayerError."""
    if student_shape == teacher_shape:
        return nn.Identity()
    if len(student_shape) == len(teacher_shape) and len(student_shape) in (2, 3):  # C x L or C x H x W maps
        if student_shape[1:] != teacher_shape[1:]:
            raise LayerError(f"student map {student_shape} and teacher map {teacher_shape} differ in H x W; a 1x1 "
                             "projector maps channels only: pair layers of the same spatial size", key)
        conv = nn.Conv1d if len(student_shape) == 2 else nn.Conv2d
        return conv(student_shape[0], teacher_shape[0], 1, bias=False)
    if len(student_shape) == 1 and len(teacher_shape) == 1:
        return nn.Linear(student_shape[0], teacher_shape[0], bias=False)
    raise LayerError(f"no projector maps a student output of shape {student_shape} onto a teacher output of "
                     f"shape {teacher_shape}: pair two C x H x W maps or two vectors", key)


class HintTerm(Term):
    """Sum over the layer pairs of weight * ``pair_loss(projected student output, teacher output)``."""

    pair_loss = staticmethod(F.mse_loss)

    def __init__(self, pairs: list[LayerPair], projectors: list[nn.Module]):
        super().__init__()
        self.pairs = [(p.teacher, p.student, p.weight) for p in pairs]
        self.projectors = nn.ModuleList(projectors)
        self.teacher_layers = tuple(p.teacher for p in pairs)
        self.student_layers = tuple(p.student for p in pairs)

    def forward(self, batch: Batch) -> torch.Tensor:
        total = batch.logits.new_zeros(())
        for (t_name, s_name, w), proj in zip(self.pairs, self.projectors):
            total = total + w * self.pair_loss(proj(batch.student_features[s_name]), batch.teacher_features[t_name])
        return total


def pair_shapes(pairs: list[LayerPair], probe: Probe):
    """``(i, student shape, teacher shape)`` of every pair, in order; a LayerError names a missing layer."""
    for i, pair in enumerate(pairs):
        t_shape = probe.shape("teacher", pair.teacher, ("pairs", i, "teacher"))
        yield i, probe.shape("student", pair.student, ("pairs", i, "student")), t_shape


@register_loss(HintConfig)
def build_hint(cfg: HintConfig, probe: Probe) -> Term:
    return HintTerm(cfg.pairs, [make_projector(s, t, ("pairs", i)) for i, s, t in pair_shapes(cfg.pairs, probe)])
