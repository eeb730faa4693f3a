"""The stage registry: a stage is a frozen config class plus one function over artifacts, and the rules it owns,
registered for the tasks it serves (``classify``, ``lm``). Adding a stage is one file and one import in
compress/stages/__init__.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from compress.artifact import Artifact
    from compress.errors import RecipeError

__all__ = ["Strict", "StageConfig", "TrainConfig", "LMTrainConfig", "StageSpec", "CheckContext", "STAGES", "REGISTRY",
           "TASKS", "register_stage", "stages_for"]

TASKS = ("classify", "lm")


class Strict(BaseModel):
    """Every recipe and stage config: unknown keys are errors, values are frozen after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class StageConfig(Strict):
    """Base of every stage config."""

    type: str

    def augmentation(self) -> dict | None:
        """The training augmentation a training stage applies (the scratch baseline copies the first one's)."""
        return None


class TrainConfig(Strict):
    """An epoch budget (a teacher's ``train``; every training stage's schedule, compress.stages.train.Schedule)."""

    epochs: int = Field(30, ge=1, le=10_000)
    lr: float = Field(1e-3, gt=0, le=10)
    batch_size: int = Field(64, ge=1, le=65_536)
    weight_decay: float = Field(0.0, ge=0)


class LMTrainConfig(Strict):
    """A step budget (an LM teacher's ``train``; the LM training stages' keys, compress.stages.lm_distill)."""

    steps: int = Field(300, ge=1, le=10_000_000, description="optimizer steps")
    lr: float = Field(3e-3, gt=0, le=10)
    batch_size: int = Field(32, ge=1, le=65_536, description="context windows per step")
    weight_decay: float = Field(0.0, ge=0)


@dataclass(frozen=True)
class CheckContext:
    """What a stage's ``check`` sees (``compress validate`` and ``pipeline.prepare``, before any compute): the
    recipe, the stage's position, and what the task prepared (``teacher``, ``student``, ``splits``)."""

    recipe: Any
    index: int  # the stage's position in recipe.stages
    teacher: Any
    student: Any
    splits: Any

    def error(self, message: str, *keys) -> RecipeError:
        """A RecipeError at ``stages[index].<keys>`` (file and line of the key)."""
        return self.recipe.error_at(message, "stages", self.index, *keys)


@dataclass(frozen=True)
class StageSpec:
    name: str
    config: type[StageConfig]
    fn: Callable[["Artifact", StageConfig, Any], "Artifact"]
    accepts: frozenset[str]
    produces: str
    trains: bool  # consumes training budget; counted into the scratch baseline's budget
    tasks: tuple[str, ...] = ("classify",)
    check: Callable[[StageConfig, CheckContext], None] | None = None  # raises ctx.error(...) for a bad config
    student_epochs: Callable[[StageConfig], int] | None = None  # epochs on student-sized models; None: cfg.epochs
    # A branch stage right after another branch stage takes that stage's input, not its output: several sit
    # side by side on one model (the LM's INT8 and INT4 files of one fp32 export), each keyed by that input.
    branches: bool = False


# task -> stage type -> spec: one registry, one view per task (the same type name may serve two tasks with
# two configs: ``distill`` of images and of language models).
REGISTRY: dict[str, dict[str, StageSpec]] = {task: {} for task in TASKS}
STAGES = REGISTRY["classify"]  # the classification stages (the default task)


def stages_for(task: str) -> dict[str, StageSpec]:
    return REGISTRY[task]


def register_stage(config: type[StageConfig], *, accepts: set[str], produces: str, trains: bool = False,
                   tasks: tuple[str, ...] = ("classify",), check=None, student_epochs=None, branches: bool = False):
    """Register ``fn`` under the literal value of ``config.type`` for each of ``tasks``; a duplicate raises."""
    name = config.model_fields["type"].annotation.__args__[0]

    def wrap(fn):
        for task in tasks:
            if name in REGISTRY[task]:
                raise ValueError(f"stage {name!r} is registered twice for task {task!r} "
                                 f"({REGISTRY[task][name].fn.__module__} and {fn.__module__})")
            REGISTRY[task][name] = StageSpec(name, config, fn, frozenset(accepts), produces, trains, tuple(tasks),
                                             check, student_epochs, branches)
        return fn

    return wrap
