"""Save and load models whose layer shapes changed (pruned), without pickles.

Tensors go to safetensors; each resized layer's structural attributes (channels, features) go to
the file's JSON metadata. Loading starts from a freshly built model of the same architecture, gives
every tensor the saved shape and sets the attributes, so ``forward`` and re-export keep working.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from compress._io import atomic_path
from compress.errors import ModelError

__all__ = ["save_model", "load_model"]

_ATTRS = {
    nn.Conv1d: ("in_channels", "out_channels", "groups"),
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.Linear: ("in_features", "out_features"),
    nn.BatchNorm1d: ("num_features",),
    nn.BatchNorm2d: ("num_features",),
    nn.LayerNorm: ("normalized_shape",),
    nn.Embedding: ("num_embeddings", "embedding_dim"),
}


def save_model(model: nn.Module, path: Path) -> Path:
    from safetensors.torch import save_file

    attrs = {}
    for name, mod in model.named_modules():
        for cls, keys in _ATTRS.items():
            if type(mod) is cls:
                attrs[name] = {k: getattr(mod, k) for k in keys}
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"compress.attrs": json.dumps(attrs)})
    return path


def load_model(template: nn.Module, path: Path) -> nn.Module:
    """``template`` is a fresh model of the same architecture; it is not modified (a copy is returned)."""
    import copy

    from safetensors import safe_open

    model = copy.deepcopy(template)
    try:
        with safe_open(str(path), framework="pt") as f:
            attrs = json.loads((f.metadata() or {}).get("compress.attrs", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise ModelError(f"{path}: unreadable model checkpoint ({exc})") from None
    own = dict(model.named_modules())
    for key, value in tensors.items():
        mod_name, _, attr = key.rpartition(".")
        mod = own.get(mod_name)
        if mod is None:
            raise ModelError(f"{path}: tensor {key} belongs to no layer of this architecture")
        if attr in mod._parameters and mod._parameters[attr] is not None:
            mod._parameters[attr] = nn.Parameter(value, requires_grad=mod._parameters[attr].requires_grad)
        elif attr in mod._buffers:
            mod._buffers[attr] = value
        else:
            raise ModelError(f"{path}: tensor {key} does not exist in this architecture")
    for name, values in attrs.items():
        for k, v in values.items():
            setattr(own[name], k, tuple(v) if isinstance(v, list) else v)
    return model.eval()
