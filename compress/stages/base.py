"""The stage registry: a stage is a frozen config class plus one function over artifacts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from compress.artifact import Artifact
    from compress.context import Context

__all__ = ["StageConfig", "StageSpec", "STAGES", "register_stage"]


class StageConfig(BaseModel):
    """Base of every stage config: unknown keys are errors, values are frozen after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    type: str


@dataclass(frozen=True)
class StageSpec:
    name: str
    config: type[StageConfig]
    fn: Callable[["Artifact", StageConfig, "Context"], "Artifact"]
    accepts: frozenset[str]
    produces: str
    trains: bool  # consumes training epochs; counted into the scratch baseline's budget


STAGES: dict[str, StageSpec] = {}


def register_stage(config: type[StageConfig], *, accepts: set[str], produces: str, trains: bool = False):
    """Register ``fn`` under the literal value of ``config.type``; a duplicate name raises."""
    name = config.model_fields["type"].annotation.__args__[0]

    def wrap(fn):
        if name in STAGES:
            raise ValueError(f"stage {name!r} is registered twice ({STAGES[name].fn.__module__} and {fn.__module__})")
        STAGES[name] = StageSpec(name, config, fn, frozenset(accepts), produces, trains)
        return fn

    return wrap
