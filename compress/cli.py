"""The command line. Heavy imports (torch, onnxruntime) happen inside commands so ``--help`` is instant.

Exit codes: 0 success, 1 a failure while running, 2 a bad recipe or bad arguments (before any compute).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

__all__ = ["main", "cli"]


class _DefaultRun(click.Group):
    """``compress RECIPE.yaml`` means ``compress run RECIPE.yaml``."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)


def _fail(exc: Exception) -> None:
    from compress.errors import CompressError

    code = exc.exit_code if isinstance(exc, CompressError) else 1
    click.secho(f"error: {exc}", fg="red", err=True)
    sys.exit(code)


def _load(recipe_path: str):
    from compress.recipe import load_recipe

    return load_recipe(recipe_path)


@click.group(cls=_DefaultRun, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="compress")
def cli() -> None:
    """Distill, prune, fine-tune, quantize, export and benchmark a model for the edge.

    \b
    compress recipes/digits.yaml            run a recipe (same as `compress run ...`)
    compress validate recipes/digits.yaml   check a recipe, compute nothing
    """


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None, help="Output root (default: exported/).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or table; the report files are still written.")
def run(recipe: str, output: str | None, quiet: bool) -> None:
    """Run RECIPE: every stage, then the report (<output>/<name>/report.{json,md,png})."""
    from compress.errors import CompressError

    try:
        from compress.pipeline import run as run_pipeline

        run_pipeline(_load(recipe), output=output, quiet=quiet)
    except CompressError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        click.secho("interrupted", fg="red", err=True)
        sys.exit(130)


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
def validate(recipe: str) -> None:
    """Check RECIPE without training: keys, values, stage order, files, data, model shapes, weights."""
    from compress.errors import CompressError

    try:
        from compress.pipeline import validate as validate_recipe

        lines = validate_recipe(_load(recipe))
    except CompressError as exc:
        _fail(exc)
        return
    for line in lines:
        click.echo(line)
    click.secho(f"{Path(recipe)}: valid", fg="green")


def main() -> None:
    cli(prog_name="compress")


if __name__ == "__main__":
    main()
