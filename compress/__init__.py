"""compress: distill, prune, fine-tune, quantize, export and benchmark a model for the edge from one recipe.

    >>> from compress import load_recipe, run
    >>> report = run(load_recipe("recipes/digits.yaml"))  # doctest: +SKIP
    >>> report = run("recipes/tiny-lm.yaml", output="/tmp/out")  # a path works too; task: lm runs the LM pipeline  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"
__all__ = ["load_recipe", "run", "validate", "__version__"]


def __getattr__(name):  # lazy: `compress --help` must not import torch
    if name == "load_recipe":
        from compress.recipe import load_recipe

        return load_recipe
    raise AttributeError(name)


def _loaded(recipe: Any):
    if isinstance(recipe, (str, Path)):
        from compress.recipe import load_recipe

        return load_recipe(recipe)
    return recipe


def run(recipe: Any, output: str | Path | None = None, quiet: bool = False, force: bool = False) -> dict:
    """Run a recipe (a loaded ``Recipe`` / ``LMRecipe`` or the path of a YAML file); returns the report.

    Example:
        >>> import compress
        >>> report = compress.run("recipes/tiny-lm.yaml", output="/tmp/out", quiet=True)  # doctest: +SKIP
    """
    from compress import pipeline

    return pipeline.run(_loaded(recipe), output=output, quiet=quiet, force=force)


def validate(recipe: Any, output: str | Path | None = None) -> list[str]:
    """Check a recipe (or its path) without training; returns what a run would do, as lines."""
    from compress import pipeline

    return pipeline.validate(_loaded(recipe), output)
