"""The loss registry and the plumbing every distillation loss shares (adding a loss: compress/losses/__init__.py).

A builder gets its config and a :class:`Probe` (the shapes of named layers of teacher and student, found
by one forward pass) and returns a :class:`Term`: an ``nn.Module`` whose ``forward(batch)`` gives a scalar,
and which names the layers it reads. A Term with parameters (a hint projector) is trained with the student
and never exported.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from compress.errors import key_path

__all__ = ["LossConfig", "LOSSES", "LossSpec", "register_loss", "Batch", "Probe", "Term", "FnTerm", "LayerError",
           "FeatureTap"]


class LossConfig(BaseModel):
    """Base of every loss config: unknown keys are errors, values are frozen after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    kind: str
    weight: float = Field(1.0, ge=0, description="multiplies this term in the sum of the stage's losses")


@dataclass
class Batch:
    """What a term may read for one training batch (teacher values are looked up by sample index)."""

    logits: torch.Tensor                      # student logits (B, K), with grad
    targets: torch.Tensor                     # hard labels (B,)
    teacher_logits: torch.Tensor | None       # (B, K), no grad
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)  # layer name -> output, with grad
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)  # layer name -> output, no grad


class Term(nn.Module):
    """One loss term. ``teacher_layers``/``student_layers`` name the modules whose outputs it reads."""

    teacher_layers: tuple[str, ...] = ()
    student_layers: tuple[str, ...] = ()
    needs_teacher: bool = True

    def forward(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class FnTerm(Term):
    """A term that is ``fn(batch)`` on the logits alone (no layers, no parameters)."""

    def __init__(self, fn: Callable[[Batch], torch.Tensor], needs_teacher: bool = True):
        super().__init__()
        self.fn, self.needs_teacher = fn, needs_teacher

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.fn(batch)


class LayerError(ValueError):
    """A layer name or shape that a loss cannot use; ``path`` is the key path inside the loss entry."""

    def __init__(self, message: str, path: tuple):
        super().__init__(message)
        self.path = tuple(path)

    @property
    def key(self) -> str:
        return key_path(self.path)


@dataclass(frozen=True)
class LossSpec:
    config: type[LossConfig]
    build: Callable[[LossConfig, "Probe"], Term]


LOSSES: dict[str, LossSpec] = {}


def register_loss(config: type[LossConfig]):
    """Register a builder under the literal value of ``config.kind``; a duplicate kind raises."""
    kind = config.model_fields["kind"].annotation.__args__[0]

    def wrap(fn):
        if kind in LOSSES:
            raise ValueError(f"loss {kind!r} is registered twice ({LOSSES[kind].build.__module__} and {fn.__module__})")
        LOSSES[kind] = LossSpec(config, fn)
        return fn

    return wrap


class FeatureTap:
    """Forward hooks that keep the outputs of named modules (no model surgery).

    Outputs are cloned: the built-in models use ``ReLU(inplace=True)``, which would otherwise
    overwrite a captured BatchNorm output with its ReLU.
    """

    def __init__(self, model: nn.Module, names: tuple[str, ...] | list[str]):
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [model.get_submodule(name).register_forward_hook(functools.partial(self._keep, name))
                         for name in dict.fromkeys(names)]

    def _keep(self, name, _module, _inputs, output):
        self.outputs[name] = output.clone()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


class Probe:
    """Shapes (without the batch axis) of named layers, from one forward pass on zeros (batch 2)."""

    def __init__(self, teacher: nn.Module | None, student: nn.Module, input_shape: tuple[int, ...],
                 stage: dict | None = None):
        self.teacher, self.student, self.input_shape = teacher, student, tuple(input_shape)
        self.stage = stage or {}  # the stage's own temperature/alpha, the defaults of logit losses
        self._shapes: dict[tuple[str, str], tuple[int, ...]] = {}

    def shape(self, role: str, name: str, key: tuple) -> tuple[int, ...]:
        """Output shape of layer ``name`` of the teacher or student; LayerError (listing the names) if absent."""
        model = self.teacher if role == "teacher" else self.student
        if model is None:
            raise LayerError(f"layer '{name}' asked of a teacher that has no layers to read", key)
        names = [n for n, _ in model.named_modules() if n]
        if name not in names:
            raise LayerError(f"the {role} has no layer '{name}'; available layers: {', '.join(names)}", key)
        if (role, name) not in self._shapes:
            was_training = model.training
            model.eval()
            with FeatureTap(model, [name]) as tap, torch.no_grad():
                model(torch.zeros(2, *self.input_shape))
            model.train(was_training)
            out = tap.outputs.get(name)
            if not isinstance(out, torch.Tensor):
                raise LayerError(f"the {role}'s layer '{name}' did not produce a tensor in a forward pass", key)
            self._shapes[(role, name)] = tuple(out.shape[1:])
        return self._shapes[(role, name)]
