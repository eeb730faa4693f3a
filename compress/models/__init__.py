"""Build models from a recipe's ModelSpec and load weights safely (safetensors, or weights_only torch.load)."""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

import torch
from torch import nn

from compress.errors import ModelError
from compress.models.zoo import ZOO

__all__ = ["build_model", "load_weights", "read_state_dict", "check_io", "describe_spec"]


def describe_spec(spec) -> str:
    if spec.arch:
        heads = f", heads={spec.heads or 4}" if spec.arch in ("transformer", "text_transformer") else ""
        heads += f", patch={spec.patch}" if spec.patch is not None else ""
        return f"{spec.arch}(width={spec.width}, depth={spec.depth}{heads})"
    return f"{spec.factory}({', '.join(f'{k}={v!r}' for k, v in spec.kwargs.items())})"


def build_model(spec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A fresh (randomly initialised) model for ``spec``; the caller seeds torch first."""
    if spec.arch:
        try:
            extra = {"heads": spec.heads or 4} if spec.arch in ("transformer", "text_transformer") else {}
            if spec.patch is not None:
                extra["patch"] = spec.patch
            return ZOO[spec.arch](tuple(input_shape), num_classes, width=spec.width, depth=spec.depth, **extra)
        except ValueError as exc:
            raise ModelError(str(exc)) from None
    mod_name, fn_name = spec.factory.split(":")
    _refuse_stdlib(spec.factory, mod_name)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ModelError(f"factory '{spec.factory}': cannot import module '{mod_name}' ({exc})") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        what = "" if fn is None else f" (it is {_a(type(fn).__name__)})"
        raise ModelError(f"factory '{spec.factory}': module '{mod_name}' has no function '{fn_name}'{what}")
    if inspect.isfunction(fn) or inspect.isclass(fn) or inspect.isbuiltin(fn):  # their __module__ is where they are defined
        _refuse_stdlib(spec.factory, getattr(fn, "__module__", None) or "builtins", via=True)
    if not (inspect.isfunction(fn) or (inspect.isclass(fn) and issubclass(fn, nn.Module))):
        if inspect.isclass(fn):
            what = "a class that does not subclass torch.nn.Module"
        elif inspect.isbuiltin(fn):
            what = "a built-in function (compiled code), not a Python function"
        else:
            kind = type(fn)
            name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
            what = f"an object of type {name}, not a Python function"
        raise ModelError(f"factory '{spec.factory}': '{fn_name}' is {what}; a factory is your own function that "
                         "returns a torch.nn.Module, or an nn.Module class")
    try:
        model = fn(**spec.kwargs)
    except TypeError as exc:
        raise ModelError(f"factory '{spec.factory}' rejected kwargs {spec.kwargs}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"factory '{spec.factory}' returned {type(model).__name__}, not a torch.nn.Module")
    return model


# Not user code, besides sys.stdlib_module_names (the standard library's top-level modules, which already lists
# builtins, importlib and site): the running script.
_NOT_USER_CODE = frozenset({"builtins", "__main__", "importlib", "site"})


def _refuse_stdlib(factory: str, module: str, via: bool = False) -> None:
    """A factory is the user's own code: refuse the standard library's modules (``os:system``, ``subprocess:run``,
    ``builtins:eval``), before importing them, and, ``via=True``, a callable defined there but re-exported by a
    user module (``mymod:system`` after ``from os import system``)."""
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in _NOT_USER_CODE:
        where = f"'{factory.split(':')[1]}' comes from '{module}', which" if via else f"'{module}'"
        raise ModelError(f"factory '{factory}': {where} is part of the Python standard library; a factory must be your "
                         "own code (a function or nn.Module class in your package)")


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors only: safetensors, or torch.load(weights_only=True), which refuses pickled code."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"{path}: corrupt or truncated safetensors file ({exc})") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError (refused globals), RuntimeError (truncated zip), EOFError
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text or "UnpicklingError" in type(exc).__name__:
            import re

            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f" (it references {found.group(1)})" if found else ""
            raise ModelError(f"{path}: refused to load: the file holds pickled objects or code, not only tensors{what}; "
                             "nothing in it was run. Save a state dict with safetensors.torch.save_file "
                             "or torch.save(model.state_dict()).") from None
        raise ModelError(f"{path}: corrupt or truncated checkpoint ({type(exc).__name__}: {text.splitlines()[0] if text else ''})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"{path}: expected a state dict (name -> tensor), got {type(sd).__name__}")
    return sd


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict into ``model``; every mismatch is named, nothing is loaded partially."""
    sd = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        raise ModelError(f"{path}: state dict does not match the model: "
                         f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
                         f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    wrong = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items() if sd[k].shape != v.shape]
    if wrong:
        raise ModelError(f"{path}: tensor shapes do not match the model: {'; '.join(wrong[:5])}")
    model.load_state_dict(sd)
    return model


def check_io(model: nn.Module, input_shape: tuple[int, ...], num_classes: int, what: str) -> None:
    """One forward pass on zeros (batch 2) to check that the model takes the data and has one logit per class."""
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except Exception as exc:
        raise ModelError(f"{what} cannot take the data's input shape {tuple(input_shape)}: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    if not isinstance(out, torch.Tensor) or out.shape != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"{what} outputs {shape} for a batch of 2, but the data has {num_classes} classes "
                         f"(expected (2, {num_classes}))")
