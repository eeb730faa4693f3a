"""What every recipe shares, whatever its task: strict keys, the data split, and the base every task's recipe
extends (name, seed, baseline, output; errors at a key path with the recipe's file and line)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, PrivateAttr, model_validator

from compress.errors import ChainError, DataError, ModelError, RecipeError, key_path
from compress.stages.base import Strict, stages_for

__all__ = ["Strict", "SplitConfig", "RecipeBase", "check_chain", "nodes"]


class SplitConfig(Strict):
    val: float = Field(0.2, gt=0, lt=1, description="fraction held out for model selection and calibration checks")
    test: float = Field(0.2, gt=0, lt=1, description="fraction held out for the final report; never trained or calibrated on")

    @model_validator(mode="after")
    def _fits(self):
        if self.val + self.test >= 1:
            raise ValueError(f"val + test must leave data for training (got {self.val} + {self.test} >= 1)")
        return self


class RecipeBase(Strict):
    """The keys every task's recipe has; each task's recipe narrows ``task`` to its own name (the discriminator)."""

    task: str = Field(description="classify (the default) or lm")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100, description="output folder name")
    seed: int = 0
    baseline: Literal["scratch", "none"] = Field("scratch", description="train a from-scratch student with the same budget")
    output: Path | None = Field(None, description="output root (default exported/); the CLI's --output wins")

    # Set by load_recipe: where the recipe came from, for error messages and relative paths.
    source_file: str | None = Field(None, exclude=True)
    _lines: dict = PrivateAttr(default_factory=dict)  # key path -> line in source_file

    def error_at(self, message: str, *path) -> RecipeError:
        """A RecipeError at a key path, for problems found after parsing (missing files, data, shapes)."""
        line = next((self._lines[path[:n]] for n in range(len(path), -1, -1) if path[:n] in self._lines), None)
        return RecipeError(message, self.source_file, line, key_path(path) or None)

    def load_data(self, load):
        """``load(self.data, self.seed)`` (the task's reader); its DataError is a RecipeError at ``data``'s key."""
        try:
            return load(self.data, self.seed)
        except DataError as exc:
            raise self.error_at(str(exc), "data", "path" if self.data.path else "source") from None

    def with_weights(self, role: str, model):
        """``model`` with ``<role>.weights`` loaded (every mismatch a RecipeError at that key), in eval mode; or
        ``model`` as it is when the recipe gives no weights."""
        from compress.models import load_weights

        path = getattr(self, role).weights
        try:
            return load_weights(model, path).eval() if path else model
        except ModelError as exc:
            raise self.error_at(str(exc), role, "weights") from None

    def check(self) -> None:
        """Rules across keys, after parsing and before any compute (the task's recipe adds its own)."""
        check_chain(self)

    def check_files(self) -> None:
        """Checks of the files a recipe names that need no compute (a model folder's config), after resolve_paths."""

    def resolve_paths(self, base: Path) -> "RecipeBase":
        """Every relative path of the recipe made absolute against ``base``, the recipe's folder, as a user reading
        it expects, so that the report's copy of the recipe names the same files from anywhere (compress check
        re-measures). ``output`` stays relative to where compress runs, like ``--output``."""

        def fix(obj):
            if isinstance(obj, Path):
                return obj if obj.is_absolute() else (base / obj).absolute()
            if isinstance(obj, BaseModel):  # only what changed is updated: the fields set stay those the user set
                new = {n: fix(getattr(obj, n)) for n in type(obj).model_fields if n != "output"}
                changed = {n: v for n, v in new.items() if v is not getattr(obj, n)}
                return obj.model_copy(update=changed) if changed else obj
            if isinstance(obj, (list, tuple)):
                new = [fix(v) for v in obj]
                return type(obj)(new) if any(a is not b for a, b in zip(new, obj)) else obj
            return obj

        return fix(self)


def nodes(obj):
    """Every value of a recipe tree, depth first: the models, their fields' values and the items of lists and dicts."""
    yield obj
    if isinstance(obj, BaseModel):
        obj = [getattr(obj, n) for n in type(obj).model_fields]
    elif isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        for v in obj:
            yield from nodes(v)


def check_chain(recipe: RecipeBase) -> None:
    """Each stage must accept what the one before it produces; the student enters as a torch model."""
    produced, prev, specs = "torch", "the student model", stages_for(recipe.task)
    for i, st in enumerate(recipe.stages):
        spec = specs[st.type]
        if produced not in spec.accepts:
            # the stages that turn what it gets into what it takes (export: torch -> onnx); else it belongs earlier
            makers = sorted(n for n, s in specs.items() if produced in s.accepts and s.produces in spec.accepts)
            where = f"after an {' or '.join(makers)} stage" if makers else "before it"
            raise ChainError(
                f"stage '{st.type}' cannot follow {prev}: '{st.type}' takes {' or '.join(sorted(spec.accepts))} models "
                f"but {prev} produces {produced} models; put '{st.type}' {where}",
                recipe.source_file, recipe._lines.get(("stages", i)), f"stages[{i}]")
        produced, prev = spec.produces, f"stage '{st.type}' (stages[{i}])"
