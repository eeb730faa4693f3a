"""Exceptions that reach the user. Every one carries a message meant to be read, not a traceback."""

from __future__ import annotations

__all__ = ["CompressError", "RecipeError", "ChainError", "DataError", "ModelError", "StageError", "MissingExtraError",
           "UnsafePathError", "key_path"]


def key_path(path) -> str:
    """A key path as an error names it: ``("stages", 1, "loss")`` -> ``stages[1].loss``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


class CompressError(Exception):
    """Base class: the CLI prints ``str(err)`` and exits with code 1 (2 for recipe errors)."""

    exit_code = 1


class RecipeError(CompressError):
    """A recipe problem found before any compute: names the file, the line, the key path and the choices."""

    exit_code = 2

    def __init__(self, message: str, file: str | None = None, line: int | None = None, key: str | None = None):
        self.file, self.line, self.key, self.message = file, line, key, message
        where = (f"{file}:{line}: " if line else f"{file}: ") if file else ""
        super().__init__(where + (f"{key}: " if key else "") + message)


class ChainError(RecipeError):
    """A stage cannot take what the stage before it produces."""


class DataError(CompressError):
    """Unreadable, empty or inconsistent data."""


class ModelError(CompressError):
    """A model that cannot be built or loaded, or weights that do not fit it."""


class StageError(CompressError):
    """A stage failed while running (diverged training, export parity above tolerance, ...)."""


class MissingExtraError(CompressError):
    """An optional dependency is not installed; the message names the pip command."""

    def __init__(self, what: str, extra: str, module: str):
        super().__init__(f"{what} needs the optional package '{module}': pip install 'compress[{extra}]'")


class UnsafePathError(CompressError):
    """A path that would leave the output folder (absolute, ``..``, or through a symlink inside it)."""

    exit_code = 2
