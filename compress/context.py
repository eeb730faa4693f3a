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
    _teacher_features: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict, repr=False)

    def teacher_logits(self, split: str = "train") -> torch.Tensor:
        """Teacher logits on a split, computed once and reused by every epoch and stage.

        Valid because the data has no random augmentation: the same input always gives the same logits.
        """
        if split not in self._teacher_logits:
            data = getattr(self.splits, split)
            self._teacher_logits[split] = predict_logits(self.teacher, data.x)
        return self._teacher_logits[split]

    def teacher_features(self, names, split: str = "train") -> dict[str, torch.Tensor]:
        """Outputs of the teacher's named layers on a split, computed once (like ``teacher_logits``)."""
        missing = [n for n in names if (split, n) not in self._teacher_features]
        if missing:
            from compress.losses.base import FeatureTap

            x = getattr(self.splits, split).x
            with FeatureTap(self.teacher, missing) as tap:
                parts: dict[str, list] = {n: [] for n in missing}
                for i in range(0, len(x), 512):
                    predict_logits(self.teacher, x[i:i + 512])
                    for n in missing:
                        parts[n].append(tap.outputs[n])
            for n in missing:
                self._teacher_features[(split, n)] = torch.cat(parts[n])
        return {n: self._teacher_features[(split, n)] for n in names}

    def stage_path(self, name: str, suffix: str) -> Path:
        folder = self.out_dir / "stages"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{self.stage_index + 1:02d}_{name}{suffix}"


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    out = [model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size]))) for i in range(0, len(x), batch_size)]
    return torch.cat(out)
