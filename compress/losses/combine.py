"""A stage's ``loss: [...]`` list as one training objective: weighted terms, hooks, cached teacher outputs."""

from __future__ import annotations

from typing import Annotated, Union

import torch
from pydantic import Field
from torch import nn

from compress.errors import RecipeError, key_path
from compress.losses.base import LOSSES, Batch, FeatureTap, LayerError, LossConfig, Probe, Term

__all__ = ["loss_union", "build_terms", "Objective"]


def loss_union():
    """The discriminated union (on ``kind``) of every registered loss config, built at import."""
    configs = tuple(spec.config for spec in LOSSES.values())
    return Annotated[Union[configs], Field(discriminator="kind")]  # noqa: UP007 - built at import


def build_terms(specs: list[LossConfig], teacher: nn.Module | None, student: nn.Module, input_shape,
                stage: dict, at: tuple = ("loss",), recipe=None) -> list[Term]:
    """One Term per entry; a bad layer name or shape is a RecipeError at ``<at>[i].<path>`` listing the layers."""
    probe = Probe(teacher, student, input_shape, stage)
    terms = []
    for i, cfg in enumerate(specs):
        try:
            terms.append(LOSSES[cfg.kind].build(cfg, probe))
        except LayerError as exc:
            path = (*at, i, *exc.path)
            if hasattr(recipe, "error_at"):  # names the file and line of the key
                raise recipe.error_at(str(exc), *path) from None
            raise RecipeError(str(exc), getattr(recipe, "source_file", None), None, key_path(path)) from None
    return terms


class Objective:
    """``loss_fn(logits, targets, idx)`` for ``fit``: sum of weight * term over the stage's loss list.

    Teacher logits and features on the training split are computed once (no augmentation, so they
    never change) and looked up by sample index; student features come from forward hooks that
    ``attach`` adds to the copy ``fit`` trains, and removes afterwards.
    """

    def __init__(self, specs: list[LossConfig], terms: list[Term], ctx):
        self.weights = [cfg.weight for cfg in specs]
        self.terms = nn.ModuleList(terms)
        self.student_layers = tuple(dict.fromkeys(n for t in terms for n in t.student_layers))
        teacher_layers = tuple(dict.fromkeys(n for t in terms for n in t.teacher_layers))
        self.teacher_logits = ctx.teacher_logits("train") if any(t.needs_teacher for t in terms) else None
        self.teacher_features = ctx.teacher_features(teacher_layers, "train") if teacher_layers else {}
        self._tap: FeatureTap | None = None

    def extra_params(self) -> list[nn.Parameter]:
        """Projector weights: trained with the student, never part of the exported model."""
        return list(self.terms.parameters())

    def attach(self, model: nn.Module):
        self._tap = FeatureTap(model, self.student_layers)
        return self._tap.remove

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        batch = Batch(logits, targets,
                      self.teacher_logits[idx] if self.teacher_logits is not None else None,
                      dict(self._tap.outputs) if self._tap is not None else {},
                      {n: f[idx] for n, f in self.teacher_features.items()})
        total = logits.new_zeros(())
        for w, term in zip(self.weights, self.terms):
            if w:
                total = total + w * term(batch)
        return total
