"""Online / mutual learning (Zhang et al. 2018, "Deep Mutual Learning"): peers teach each other, no teacher.

Each peer k minimises alpha * CE(z_k, y) + (1 - alpha) * T^2 * KL(p_rest || p_k), where p_rest is the
mean of the other peers' softened predictions (detached: each peer is a fixed target for the others
within a step). :class:`Peers` wraps K models in one module so that the ordinary training loop trains
them together; its forward returns peer 0's logits, so model selection on val follows peer 0, the
one that is kept.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["mutual_loss", "Peers"]


def mutual_loss(peer_logits: list[torch.Tensor], targets: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    """Sum over peers of alpha * CE + (1 - alpha) * T^2 * KL(mean of the others' softmax(z/T) || softmax(z_k/T))."""
    t = temperature
    probs = [F.softmax(z.detach() / t, dim=-1) for z in peer_logits]
    total = peer_logits[0].new_zeros(())
    for k, z in enumerate(peer_logits):
        rest = torch.stack([p for j, p in enumerate(probs) if j != k]).mean(0)
        soft = F.kl_div(F.log_softmax(z / t, dim=-1), rest, reduction="batchmean") * (t * t)
        total = total + alpha * F.cross_entropy(z, targets) + (1 - alpha) * soft
    return total


class Peers(nn.Module):
    """K peers trained together; ``forward`` returns peer 0's logits and keeps every peer's in ``last``."""

    def __init__(self, first: nn.Module, count: int, seed: int):
        super().__init__()
        peers = [first]
        for k in range(1, count):
            peer = copy.deepcopy(first)
            # Far from seed + small offsets: the pipeline initialises the student itself with seed + 1.
            torch.manual_seed(1_000_003 * k + seed)
            for m in peer.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
            peers.append(peer)
        self.peers = nn.ModuleList(peers)
        self.last: list[torch.Tensor] = []

    def forward(self, x):
        self.last = [p(x) for p in self.peers]
        return self.last[0]
