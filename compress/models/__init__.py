"""Build models from a recipe's ModelSpec and load weights safely (safetensors, or weights_only torch.load)."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
from pathlib import Path

import torch
from torch import nn

from compress.errors import ModelError
from compress.models.spec import ATTENTION_ARCHS
from compress.models.zoo import ZOO

__all__ = ["build_model", "load_weights", "read_state_dict", "check_io", "describe_spec", "set_factory_base",
           "factory_base", "search_path"]


def _zoo_kwargs(spec) -> dict:
    """A built-in arch's keyword arguments; heads (default 4) and patch are the attention archs' only."""
    extra = {"heads": spec.heads or 4} if spec.arch in ATTENTION_ARCHS else {}
    return {"width": spec.width, "depth": spec.depth, **extra, **({} if spec.patch is None else {"patch": spec.patch})}


def describe_spec(spec) -> str:
    if spec.arch:
        return f"{spec.arch}({', '.join(f'{k}={v}' for k, v in _zoo_kwargs(spec).items())})"
    return f"{spec.factory}({', '.join(f'{k}={v!r}' for k, v in spec.kwargs.items())})"


def build_model(spec, input_shape: tuple[int, ...], num_classes: int, base: str | Path | None = None) -> nn.Module:
    """A fresh (randomly initialised) model for ``spec``; the caller seeds torch first.

    A ``factory`` module is looked for in ``base`` first (default: the folder of the recipe that named the spec,
    ``factory_base``), then on ``sys.path``; see ``_factory_path``.
    """
    if spec.arch:
        try:
            return ZOO[spec.arch](tuple(input_shape), num_classes, **_zoo_kwargs(spec))
        except ValueError as exc:
            raise ModelError(str(exc)) from None
    mod_name, fn_name = spec.factory.split(":")
    _refuse_stdlib(spec.factory, mod_name)
    base = Path(base) if base is not None else factory_base(spec)
    with _factory_path(base):  # the factory's own lazy imports (inside the function) see the folder too
        mod = _import_factory(spec.factory, mod_name, base)
        fn = getattr(mod, fn_name, None)
        if not callable(fn):
            noun = type(fn).__name__
            what = "" if fn is None else f" (it is {'an' if noun[:1] in 'aeiou' else 'a'} {noun})"
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


# --- where a factory's module is found -----------------------------------------------------------------------

_BASE = "_factory_base"  # attribute of a ModelSpec: the folder of the recipe that named it (not a recipe key)
_FROM_RECIPE: dict[str, Path] = {}  # top-level module name -> the recipe folder it was imported from, by this module


def set_factory_base(spec, folder: str | Path | None) -> None:
    """Record ``folder`` (the recipe's folder) as where ``spec``'s factory module is looked for first. Set by
    compress.recipe.parse_recipe on every factory spec of a recipe read from a file; kept by copies of the spec,
    never dumped (it is not a recipe key)."""
    object.__setattr__(spec, _BASE, None if folder is None else Path(folder).absolute())


def factory_base(spec) -> Path | None:
    """The folder ``spec``'s factory module is looked for in first (None: only ``sys.path``)."""
    return getattr(spec, "__dict__", {}).get(_BASE)


@contextlib.contextmanager
def _factory_path(base: Path | None):
    """``base`` at the front of ``sys.path`` for the duration (the import and the call of a factory), then removed:
    a module beside the recipe is found as if the recipe were a script in that folder, and nothing else changes."""
    if base is None:
        yield
        return
    entry = str(base)
    sys.path.insert(0, entry)
    importlib.invalidate_caches()  # a module written after the folder was last listed
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):  # the first occurrence: ours, unless the factory inserted it too
            sys.path.remove(entry)


def _own_file(base: Path, top: str) -> Path | None:
    """``base/top.py`` or ``base/top/`` (a package), when the recipe's folder has a module of that name."""
    candidates = (base / f"{top}.py", base / top)
    return next((c for c in candidates if c.is_file() or (c.is_dir() and c.suffix == "")), None)


def _loaded_from(module) -> Path | None:
    f = getattr(module, "__file__", None)
    f = f or next(iter(getattr(module, "__path__", None) or []), None)  # a namespace package has no __file__
    return Path(f).resolve() if f else None


def _import_factory(factory: str, mod_name: str, base: Path | None):
    """Import the factory's module: from the recipe's folder ``base`` first (already on ``sys.path``, _factory_path),
    then ``sys.path``. A module of the same name imported earlier from another recipe's folder is imported again from
    this one; one imported from anywhere else while this folder has its own is an error naming both."""
    top = mod_name.split(".")[0]
    own = _own_file(base, top) if base is not None else None
    loaded = sys.modules.get(top)
    if own is not None and loaded is not None:
        where = _loaded_from(loaded)
        if where is None or not where.is_relative_to(base.resolve()):
            if top not in _FROM_RECIPE:
                raise ModelError(f"factory '{factory}': module '{top}' is already imported from {where or 'memory'}, "
                                 f"so {own} beside the recipe cannot be imported under that name; rename one of them")
            for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
                del sys.modules[name]  # imported by compress from another recipe's folder: this recipe's own wins
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        if isinstance(exc, ModuleNotFoundError) and missing and (mod_name == missing or mod_name.startswith(missing + ".")):
            raise ModelError(f"factory '{factory}': cannot import module '{mod_name}' ({exc}); searched "
                             + (f"the recipe's folder {base}, then " if base is not None else "")
                             + f"sys.path: {search_path([e for e in sys.path if e != str(base)])}") from None
        found = _loaded_from(sys.modules[top]) if top in sys.modules else own
        raise ModelError(f"factory '{factory}': module '{mod_name}'" + (f" ({found})" if found else "")
                         + f" was found, but importing it failed: {type(exc).__name__}: {exc}") from None
    if own is not None and (where := _loaded_from(sys.modules.get(top))) is not None and where.is_relative_to(base.resolve()):
        _FROM_RECIPE[top] = base
    return mod


def search_path(entries: list[str] | None = None, shown: int = 5) -> str:
    """``sys.path`` (or ``entries``) in short form: the first ``shown`` folders ('' is the current folder), then a count."""
    entries = list(sys.path if entries is None else entries)
    head = [e or "." for e in entries[:shown]]
    rest = len(entries) - len(head)
    return ", ".join(head) + (f" and {rest} more" if rest > 0 else "") if entries else "(empty)"


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
