"""``compress.run`` / ``compress.validate``: a recipe (or its path) to the pipeline of its task, as the CLI does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["run", "validate", "pipeline_for"]


def _loaded(recipe: Any):
    if isinstance(recipe, (str, Path)):
        from compress.recipe import load_recipe

        return load_recipe(recipe)
    return recipe


def pipeline_for(recipe: Any):
    """compress.pipeline, or compress.lm.pipeline for a ``task: lm`` recipe: both have run() and validate()."""
    if getattr(recipe, "task", None) == "lm":
        from compress.lm import pipeline
    else:
        from compress import pipeline
    return pipeline


def run(recipe: Any, output: str | Path | None = None, quiet: bool = False, force: bool = False) -> dict:
    """Run a recipe (a loaded ``Recipe`` / ``LMRecipe`` or the path of a YAML file); returns the report.

    Example:
        >>> import compress
        >>> report = compress.run("recipes/tiny-lm.yaml", output="/tmp/out", quiet=True)  # doctest: +SKIP
    """
    recipe = _loaded(recipe)
    return pipeline_for(recipe).run(recipe, output=output, quiet=quiet, force=force)


def validate(recipe: Any, output: str | Path | None = None) -> list[str]:
    """Check a recipe (or its path) without training; returns what a run would do, as lines."""
    recipe = _loaded(recipe)
    return pipeline_for(recipe).validate(recipe, output)
