"""What every language-model stage may read: the recipe, the byte splits, its teacher, the verified cache."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compress._progress import progress_bar, say
from compress.cache import CorruptEntry, cache_key
from compress.context import Context
from compress.lm.data import TextSplits, eval_windows
from compress.lm.train import evaluate_lm, teacher_continuations, torch_logits, train_lm
from compress.stages.base import LMTrainConfig
from compress.training import cached_model

__all__ = ["LMContext"]


@dataclass
class LMContext:
    recipe: Any
    splits: TextSplits
    teacher: torch.nn.Module  # the tutor of this chain: the teacher, or the last assistant
    out_dir: Path
    quiet: bool = False
    teacher_key: str = ""
    cache: Any = None  # compress.cache.Cache
    stage_index: int = 0
    stage_key: str = ""  # set by the pipeline before each stage runs
    label: str = "student"  # the model the stages are running on (student, assistant0, ...)

    @property
    def context(self) -> int:
        return self.recipe.teacher.model.context

    def windows(self, split: str, max_tokens: int | None = None) -> np.ndarray:
        return eval_windows(getattr(self.splits, split), self.context, max_tokens or self.recipe.eval.max_tokens)

    stage_path = Context.stage_path  # out_dir/stages/NN_name.suffix, as for every task

    def train(self, what: str, model: torch.nn.Module, key: str, budget: LMTrainConfig, **kw) -> tuple:
        """Train ``model`` in place by ``train_lm`` (or reuse the verified weights cached under ``key``); ``(model,
        info)``."""

        def make():
            t0 = time.perf_counter()
            with progress_bar(what, budget.steps, self.quiet, unit="step") as advance:
                info = train_lm(model, self.splits.train, budget, self.recipe.seed, what=what,
                                progress=lambda step, loss: advance(f"loss {loss:.3f}"), **kw)
            info["seconds"] = round(time.perf_counter() - t0, 1)
            # The validation split: a held-out check of every trained model that never touches the test bytes.
            info["val_bits_per_byte"] = round(evaluate_lm(torch_logits(model), self.windows("val", 8192)).bits_per_byte, 4)
            return model, info

        return cached_model(self.cache, "lm-train", key, model, make, desc=what, quiet=self.quiet)

    def sequences(self, tutor: torch.nn.Module, tutor_key: str, sc) -> tuple[np.ndarray, dict]:
        """The tutor's continuations of training prompts (sequence-level KD), cached keyed by tutor + settings."""
        from compress import distributed

        key = cache_key("lm-seq", tutor_key, sc.model_dump(), self.recipe.seed)
        # Every rank takes the same branch (teacher_continuations is collective): rank 0's cache hit decides.
        entry = self.cache.get("lm-seq", key) if distributed.is_writer() else None
        if distributed.agree(entry is not None) and entry is None:
            entry = self.cache.get("lm-seq", key)  # rank 0 found it: the other ranks read it too
        if entry is not None:
            try:
                seq = np.load(io.BytesIO(entry.read_bytes("seq.npy")), allow_pickle=False)
                return seq, {"sequences": sc.samples, "cached": True}
            except (CorruptEntry, ValueError, OSError) as exc:
                self.cache.discard("lm-seq", key, f"cache entry lm-seq/{key}: seq.npy unreadable ({exc})")
        t0 = time.perf_counter()
        say(f"sequence-level KD: the teacher continues {sc.samples} training prompts of {sc.prompt} bytes "
            f"({'greedy' if sc.temperature == 0 else f'sampled, T={sc.temperature}'})", self.quiet)
        seq = teacher_continuations(tutor, self.splits.train, sc.samples, sc.prompt, sc.temperature, self.recipe.seed)
        if not self.cache.read_only:
            self.cache.put("lm-seq", key, {"seq.npy": lambda p: np.save(p, seq, allow_pickle=False)})
        return seq, {"sequences": sc.samples, "cached": False, "seconds": round(time.perf_counter() - t0, 1)}
