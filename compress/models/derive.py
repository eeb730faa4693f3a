"""Initialise a student from its teacher's weights where the shapes allow (DistilBERT-style).

Every tensor of the student whose name also exists in the teacher, with the same number of
dimensions and no dimension larger than the teacher's, gets the teacher's leading slice (its first
channels, units, inputs). For the built-in ``cnn``/``mlp`` a narrower, shallower student is then the
teacher's first blocks restricted to their first channels: a consistent sub-network (DistilBERT
took every other layer instead; with narrower layers that would feed channels into weights trained
on other channels). Tensors that do not fit (usually the classifier) keep their initialisation.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["init_from_teacher"]


@torch.no_grad()
def init_from_teacher(student: nn.Module, teacher: nn.Module) -> dict[str, list[str]]:
    """Copy leading slices of the teacher's tensors into ``student`` in place; return what was copied and not."""
    t_state = teacher.state_dict()
    copied, kept = [], []
    for name, tensor in student.state_dict().items():
        src = t_state.get(name)
        if src is None or src.dim() != tensor.dim() or any(a > b for a, b in zip(tensor.shape, src.shape)):
            kept.append(name)
            continue
        tensor.copy_(src[tuple(slice(0, n) for n in tensor.shape)])
        copied.append(name)
    return {"copied": copied, "kept": kept}
