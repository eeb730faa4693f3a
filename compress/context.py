"""Context: what every stage may read (recipe, data splits, teacher, output folder). Built once per run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compress.data import Splits

__all__ = ["Context"]


@dataclass
class Context:
    recipe: Any
    splits: Splits
    teacher: torch.nn.Module
    out_dir: Path
    quiet: bool = False
    stage_index: int = 0
    _teacher_logits: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def teacher_logits(self, split: str = "train") -> torch.Tensor:
        """Teacher logits on a split, computed once and reused by every epoch and stage.

        Valid because the data has no random augmentation: the same input always gives the same logits.
        """
        if split not in self._teacher_logits:
            data = getattr(self.splits, split)
            self._teacher_logits[split] = predict_logits(self.teacher, data.x)
        return self._teacher_logits[split]

    def stage_path(self, name: str, suffix: str) -> Path:
        folder = self.out_dir / "stages"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{self.stage_index + 1:02d}_{name}{suffix}"


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    out = [model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size]))) for i in range(0, len(x), batch_size)]
    return torch.cat(out)
