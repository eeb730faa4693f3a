"""Content-addressed cache of trained weights: a key is the hash of everything that decides the result."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from compress._io import atomic_path

__all__ = ["cache_key", "load_cached", "save_cached"]


def cache_key(*parts: Any) -> str:
    """sha256 of the JSON form of ``parts`` (configs, data fingerprint, seed, versions)."""
    import compress

    blob = json.dumps([compress.__version__, torch.__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def load_cached(folder: Path, key: str, model: torch.nn.Module) -> torch.nn.Module | None:
    """A copy of ``model`` (never ``model`` itself) with the weights saved under ``key``, or None."""
    path = folder / f"{key}.safetensors"
    if not path.exists():
        return None
    from safetensors.torch import load_file

    model = copy.deepcopy(model)
    try:
        model.load_state_dict(load_file(str(path)))
    except Exception:
        return None  # a stale or damaged entry is recomputed, never trusted
    return model.eval()


def save_cached(folder: Path, key: str, model: torch.nn.Module) -> Path:
    from safetensors.torch import save_file

    path = folder / f"{key}.safetensors"
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    return path
