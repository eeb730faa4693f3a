"""Relational KD (Park et al. 2019, "Relational Knowledge Distillation"): distances and angles in a batch.

Embeddings are the flattened outputs of a named layer (default: the logits). ``rkd_distance``
matches pairwise distances, each divided by the mean non-zero distance of its own batch;
``rkd_angle`` matches the cosines of the angles e_i - e_j, e_k - e_j over all triplets. Both use the
Huber (smooth L1) loss averaged over every entry, as in the authors' code; default weights are the
paper's (25 and 50). Teacher and student embeddings may have different sizes.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from compress.losses.base import Batch, LossConfig, Probe, Term, register_loss

__all__ = ["RKDDistanceConfig", "RKDAngleConfig", "rkd_distance", "rkd_angle", "pairwise_distance"]


class _RKDConfig(LossConfig):
    teacher: str | None = Field(None, description="teacher layer giving the embedding; default: the logits")
    student: str | None = Field(None, description="student layer giving the embedding; default: the logits")


class RKDDistanceConfig(_RKDConfig):
    kind: Literal["rkd_distance"]
    weight: float = Field(25.0, ge=0, description="the paper's weight for the distance term")


class RKDAngleConfig(_RKDConfig):
    kind: Literal["rkd_angle"]
    weight: float = Field(50.0, ge=0, description="the paper's weight for the angle term")


def pairwise_distance(e: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) Euclidean distances from the Gram matrix; the diagonal is exactly 0 (finite gradient)."""
    g = e @ e.T
    sq = (g.diagonal()[:, None] + g.diagonal()[None, :] - 2 * g).clamp_min(0)
    eye = torch.eye(len(e), dtype=torch.bool, device=e.device)
    return sq.masked_fill(eye, 1.0).sqrt().masked_fill(eye, 0.0)


def _normalised_distance(e: torch.Tensor) -> torch.Tensor:
    d = pairwise_distance(e)
    return d / d[d > 0].mean().clamp_min(1e-12)


def rkd_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        t = _normalised_distance(teacher.flatten(1))
    return F.smooth_l1_loss(_normalised_distance(student.flatten(1)), t)


def _angles(e: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B^3,): cos of the angle at j between e_i - e_j and e_k - e_j (0 where i = j or k = j).

    From the Gram matrix G: <e_i - e_j, e_k - e_j> = G_ik - G_ij - G_jk + G_jj, so the cost is
    B^2 D + B^3 rather than the B^3 D of normalising all B^2 difference vectors (57 s vs 7 s for
    30 epochs on digits with 1024-wide teacher embeddings, measured).
    """
    g = e @ e.T
    diag = g.diagonal()
    d = pairwise_distance(e)
    num = g[None, :, :] - g.T[:, :, None] - g[:, None, :] + diag[:, None, None]  # [j, i, k]
    den = d[:, :, None] * d[:, None, :]
    return torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num)).flatten()


def rkd_angle(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        t = _angles(teacher.flatten(1))
    return F.smooth_l1_loss(_angles(student.flatten(1)), t)


class _RKD(Term):
    def __init__(self, fn, teacher: str | None, student: str | None):
        super().__init__()
        self.fn, self.t_name, self.s_name = fn, teacher, student
        self.teacher_layers = (teacher,) if teacher else ()
        self.student_layers = (student,) if student else ()

    def forward(self, batch: Batch) -> torch.Tensor:
        s = batch.student_features[self.s_name] if self.s_name else batch.logits
        t = batch.teacher_features[self.t_name] if self.t_name else batch.teacher_logits
        return self.fn(s, t)


@register_loss(RKDDistanceConfig)
@register_loss(RKDAngleConfig)
def build_rkd(cfg: _RKDConfig, probe: Probe) -> Term:
    for role, layer in (("teacher", cfg.teacher), ("student", cfg.student)):
        if layer:
            probe.shape(role, layer, (role,))  # a LayerError when the layer does not exist
    return _RKD(rkd_distance if cfg.kind == "rkd_distance" else rkd_angle, cfg.teacher, cfg.student)
