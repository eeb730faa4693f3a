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
    stage_key: str = ""  # set by the pipeline before each stage runs
    _teacher_logits: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _teacher_features: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict, repr=False)
    # Set by the pipeline: teacher outputs are also kept in the verified cache (kind "teacher-outputs", keyed by
    # teacher_key, split contents and layer), so a second recipe with the same teacher and data does not recompute them.
    teacher_key: str | None = None
    cache: Any = None  # compress.cache.Cache

    def teacher_logits(self, split: str = "train") -> torch.Tensor:
        """Teacher logits on a split, computed once and reused by every epoch and stage.

        Valid because the data has no random augmentation: the same input always gives the same logits.
        """
        if split not in self._teacher_logits:
            data = getattr(self.splits, split)
            self._teacher_logits[split] = self._on_disk(split, "logits", lambda: predict_logits(self.teacher, data.x))
        return self._teacher_logits[split]

    def _on_disk(self, split: str, what: str, compute) -> torch.Tensor:
        """``compute()``, or its result saved earlier for the same teacher, split contents and layer."""
        if self.teacher_key is None or self.cache is None:
            return compute()
        import hashlib

        from safetensors import SafetensorError
        from safetensors.torch import load, save

        from compress.cache import CorruptEntry, cache_key

        x = np.ascontiguousarray(getattr(self.splits, split).x)
        key = cache_key("teacher-outputs", self.teacher_key, split, what, hashlib.sha256(x.tobytes()).hexdigest())
        entry = self.cache.get("teacher-outputs", key)
        if entry is not None:
            try:
                return load(entry.read_bytes("out.safetensors"))["out"]
            except (CorruptEntry, SafetensorError, KeyError) as exc:
                self.cache.discard("teacher-outputs", key, f"cache entry teacher-outputs/{key}: unreadable ({exc})")
        out = compute()
        if not self.cache.read_only:
            self.cache.put("teacher-outputs", key, {"out.safetensors": save({"out": out.contiguous()})})
        return out

    def teacher_features(self, names, split: str = "train") -> dict[str, torch.Tensor]:
        """Outputs of the teacher's named layers on a split, computed once (like ``teacher_logits``)."""
        for n in names:
            if (split, n) not in self._teacher_features and self.teacher_key is not None and self.cache is not None:
                self._teacher_features[(split, n)] = self._on_disk(split, f"layer:{n}",
                                                                   lambda n=n: self._compute_features([n], split)[n])
        missing = [n for n in names if (split, n) not in self._teacher_features]
        if missing:
            self._teacher_features.update({(split, n): v for n, v in self._compute_features(missing, split).items()})
        return {n: self._teacher_features[(split, n)] for n in names}

    def _compute_features(self, names, split: str) -> dict[str, torch.Tensor]:
        from compress.losses.base import FeatureTap

        x = getattr(self.splits, split).x
        parts: dict[str, list] = {n: [] for n in names}
        with FeatureTap(self.teacher, names) as tap:
            for i in range(0, len(x), 512):
                predict_logits(self.teacher, x[i:i + 512])
                for n in names:
                    parts[n].append(tap.outputs[n])
        return {n: torch.cat(parts[n]) for n in names}

    def stage_path(self, name: str, suffix: str) -> Path:
        folder = self.out_dir / "stages"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{self.stage_index + 1:02d}_{name}{suffix}"


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    out = [model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size]))) for i in range(0, len(x), batch_size)]
    return torch.cat(out)
