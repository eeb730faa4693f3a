"""The stage registry: a stage is a frozen config class plus one function over artifacts, and the rules it owns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch

    from compress.artifact import Artifact
    from compress.context import Context
    from compress.data import Splits
    from compress.errors import RecipeError

__all__ = ["StageConfig", "StageSpec", "CheckContext", "STAGES", "register_stage"]


class StageConfig(BaseModel):
    """Base of every stage config: unknown keys are errors, values are frozen after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    type: str

    def augmentation(self) -> dict | None:
        """The training augmentation a training stage applies (the scratch baseline copies the first one's)."""
        return None


@dataclass(frozen=True)
class CheckContext:
    """What a stage's ``check`` sees (``compress validate`` and ``pipeline.prepare``, before any compute)."""

    recipe: Any  # compress.recipe.Recipe
    index: int  # the stage's position in recipe.stages
    teacher: torch.nn.Module
    student: torch.nn.Module
    splits: Splits

    def error(self, message: str, *keys) -> RecipeError:
        """A RecipeError at ``stages[index].<keys>`` (file and line of the key)."""
        return self.recipe.error_at(message, "stages", self.index, *keys)


@dataclass(frozen=True)
class StageSpec:
    name: str
    config: type[StageConfig]
    fn: Callable[["Artifact", StageConfig, "Context"], "Artifact"]
    accepts: frozenset[str]
    produces: str
    trains: bool  # consumes training epochs; counted into the scratch baseline's budget
    tasks: tuple[str, ...] = ("classify",)
    check: Callable[[StageConfig, CheckContext], None] | None = None  # raises ctx.error(...) for a bad config
    student_epochs: Callable[[StageConfig], int] | None = None  # epochs on student-sized models; None: cfg.epochs


STAGES: dict[str, StageSpec] = {}


def register_stage(config: type[StageConfig], *, accepts: set[str], produces: str, trains: bool = False,
                   tasks: tuple[str, ...] = ("classify",), check=None, student_epochs=None):
    """Register ``fn`` under the literal value of ``config.type``; a duplicate name raises."""
    name = config.model_fields["type"].annotation.__args__[0]

    def wrap(fn):
        if name in STAGES:
            raise ValueError(f"stage {name!r} is registered twice ({STAGES[name].fn.__module__} and {fn.__module__})")
        STAGES[name] = StageSpec(name, config, fn, frozenset(accepts), produces, trains, tuple(tasks), check,
                                 student_epochs)
        return fn

    return wrap
