"""Save and load models whose layer shapes changed (pruned), without pickles.

Tensors go to safetensors; each resized layer's structural attributes (channels, features) go to
the file's JSON metadata. Loading starts from a freshly built model of the same architecture, gives
every tensor the saved shape and sets the attributes, so ``forward`` and re-export keep working.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from compress._io import atomic_path
from compress.errors import ModelError

__all__ = ["save_model", "load_model_bytes"]

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

    attrs = {name: {k: getattr(mod, k) for k in _ATTRS[type(mod)]} for name, mod in model.named_modules()
             if type(mod) in _ATTRS}
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"compress.attrs": json.dumps(attrs)})
    return path


def load_model_bytes(template: nn.Module, data: bytes, where: str) -> nn.Module:
    """A copy of ``template`` (a fresh model of the same architecture) with the checkpoint's tensors and layer
    attributes; from the bytes (the cache's: the bytes it verified are the bytes loaded)."""
    import copy
    import struct

    from safetensors.torch import load

    model = copy.deepcopy(template)
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n]) if n <= len(data) - 8 else None
        attrs = json.loads(((header or {}).get("__metadata__") or {}).get("compress.attrs", "{}"))
        tensors = load(data)
    except Exception as exc:  # noqa: BLE001 - struct, json and safetensors raise their own types
        raise ModelError(f"{where}: unreadable model checkpoint ({exc})") from None
    own = dict(model.named_modules())
    tied: dict[int, list[str]] = {}  # a parameter shared by two layers (an LM's head and embedding) stays shared
    for name, p in model.named_parameters(remove_duplicate=False):
        tied.setdefault(id(p), []).append(name)
    for key, value in tensors.items():
        mod_name, _, attr = key.rpartition(".")
        mod = own.get(mod_name)
        if mod is None:
            raise ModelError(f"{where}: tensor {key} belongs to no layer of this architecture")
        if attr in mod._parameters and mod._parameters[attr] is not None:
            mod._parameters[attr] = nn.Parameter(value, requires_grad=mod._parameters[attr].requires_grad)
        elif attr in mod._buffers:
            mod._buffers[attr] = value
        else:
            raise ModelError(f"{where}: tensor {key} does not exist in this architecture")
    for names in (names for names in tied.values() if len(names) > 1):
        src = next((n for n in names if n in tensors), names[0])  # a file may hold a tied tensor under one name
        for alias in names:
            am, _, aa = alias.rpartition(".")
            own[am]._parameters[aa] = model.get_parameter(src)
    held = set(tensors) | {n for names in tied.values() if set(names) & set(tensors) for n in names}
    missing = sorted(set(model.state_dict()) - held)
    if missing:
        raise ModelError(f"{where}: the checkpoint lacks {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    if not isinstance(attrs, dict):
        raise ModelError(f"{where}: unreadable layer attributes")
    for name, values in attrs.items():
        if name not in own or not isinstance(values, dict):
            raise ModelError(f"{where}: layer attributes for {name!r}, which this architecture does not have")
        for k, v in values.items():
            if k not in _ATTRS.get(type(own[name]), ()):  # only the structural attributes save_model writes
                raise ModelError(f"{where}: attribute {k!r} of layer {name!r} is not a structural attribute")
            setattr(own[name], k, tuple(v) if isinstance(v, list) else v)
    return model.eval()
