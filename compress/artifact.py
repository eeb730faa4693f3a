"""Artifact: what flows between stages. Stages return new artifacts; they never mutate their input."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Artifact"]


@dataclass(frozen=True)
class Artifact:
    """A model at one point of the chain.

    Attributes:
        name: the stage that made it ("student", "distill", "prune", ...).
        format: "torch" (``model`` is an nn.Module) or "onnx" (``path`` is a .onnx file).
        model: the torch module for format "torch".
        path: the file for format "onnx" (and the exported file of a torch artifact, once measured).
        params, macs: counted on the torch model; quantized files inherit them from their source.
        info: facts the stage wants in the report (pruned channels, parity, calibration, ...).
        lineage: names of the stages that led here, oldest first.
        key: content hash of its inputs, stage and config; names its cache entry.
        extra: models the stage made on the way, measured as assistants (not passed on by ``derive``).
    """

    name: str
    format: str
    model: Any = None
    path: Path | None = None
    params: int | None = None
    macs: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    lineage: tuple[str, ...] = ()
    key: str = ""  # content hash of everything that made it (cache key); "" when unknown
    extra: tuple = ()  # (name, torch model) a stage made on the way and the report measures (a distill chain's steps)

    def derive(self, name: str, **changes: Any) -> "Artifact":
        """A new artifact made from this one by stage ``name``."""
        return dataclasses.replace(self, **{"info": {}, "extra": (), **changes}, name=name,
                                   lineage=self.lineage + (self.name,))
