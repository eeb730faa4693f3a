"""The recipe schema and ``load_recipe``: every recipe error is born here, before any compute.

Errors name the file, the line, the key path and the valid choices::

    recipes/x.yaml:14: stages[1].importance: invalid value 'l3'; valid choices: l1, l2, taylor, bn_scale
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import types
import typing
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator

from compress import stages as _stages  # registers every stage
from compress._limits import MAX_RECIPE_BYTES, MAX_YAML_DEPTH, MAX_YAML_EVENTS, file_kind, fmt_bytes
from compress.config import RecipeBase, SplitConfig, Strict, check_chain, nodes
from compress.lm.recipe import LMRecipe
from compress.errors import CompressError, RecipeError, key_path
from compress.models.spec import ModelSpec
from compress.stages.base import STAGES, TrainConfig, stages_for

__all__ = ["Recipe", "load_recipe", "parse_recipe", "recipe_and_data", "DataConfig", "ModelSpec", "TrainConfig", "check_chain"]


IMAGE_SOURCES = ("digits", "imagefolder")  # sources whose size and channels a recipe can choose


class Normalize(Strict):
    """Per-channel input normalisation, applied after pixels are scaled to [0, 1]: ``(x - mean[c]) / std[c]``."""

    mean: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(min_length=1, max_length=4, description="one per channel")
    std: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(min_length=1, max_length=4,
                                                                          description="one per channel, each > 0")

    @model_validator(mode="after")
    def _same_length(self):
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} value(s) and std {len(self.std)}; give one of each per channel")
        return self


class DataConfig(Strict):
    source: Literal["digits", "mnist1d", "npz", "imagefolder", "stdlib-text", "text"] = "digits"
    path: Path | None = Field(None, description="file (npz) or directory (imagefolder; text: a sub-folder of .txt files per class)")
    split: SplitConfig = SplitConfig()
    image_size: int | None = Field(None, ge=4, le=1024, description="digits, imagefolder: resize to this square size "
                                                                   "(bilinear)")
    channels: Literal[1, 3] | None = Field(None, description="imagefolder: 1 = grayscale, 3 = RGB (default); digits: 1 "
                                                             "(default) or 3 (the grey channel repeated)")
    channel_order: Literal["rgb", "bgr"] | None = Field(None, description="imagefolder with 3 channels: the order of "
                                                                          "the channel axis (default rgb)")
    normalize: Normalize | None = Field(None, description="(x - mean[c]) / std[c] per channel, after pixels are scaled "
                                                          "to [0, 1]; the app applies it too (not folded into the graph)")
    class_names: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        None, max_length=100_000, description="one name per class, in label order (default: the image folder's sorted "
                                              "sub-folder names, the text classes, else '0'..'K-1')")
    length: int | None = Field(None, ge=8, le=4096, description="stdlib-text, text: bytes per snippet (the model's input "
                                                                "length; default 128)")
    snippets_per_class: int | None = Field(None, ge=3, le=1_000_000, description="stdlib-text, text: about this many "
                                           "snippets per class, spread evenly over its files (default 400)")

    @model_validator(mode="before")
    @classmethod
    def _source_defaults(cls, data):
        """Defaults that depend on the source, filled in so that a dumped recipe of any source parses again:
        the text keys for the text sources, channels (and the channel order) for the image sources."""
        if not isinstance(data, dict):
            return data
        given = {k: v for k, v in data.items() if v is not None}
        source = given.get("source", "digits")
        if source in ("stdlib-text", "text"):
            return {"length": 128, "snippets_per_class": 400, **given}
        if source == "digits":
            return {"channels": 1, **given}
        if source == "imagefolder":
            given = {"channels": 3, **given}
            return {"channel_order": "rgb", **given} if given["channels"] == 3 else given
        return data

    @field_validator("class_names")
    @classmethod
    def _unique_names(cls, v):
        twice = sorted(n for n, count in Counter(v or ()).items() if count > 1)
        if twice:
            raise ValueError(f"class names must be unique; {twice[:5]} appear more than once")
        return v

    @field_validator("normalize")
    @classmethod
    def _one_per_channel(cls, v, info: ValidationInfo):
        source, channels = info.data.get("source"), info.data.get("channels")
        if v is None or source not in IMAGE_SOURCES or channels is None:
            return v  # npz: checked against the arrays when they are loaded; text sources: refused below
        if len(v.mean) != channels:
            raise ValueError(f"mean and std have {len(v.mean)} value(s), but source '{source}' gives {channels} "
                             f"channel(s) (channels: {channels}); give one mean and one std per channel")
        return v

    @model_validator(mode="after")
    def _path_when_needed(self):
        if self.source in ("npz", "imagefolder", "text") and self.path is None:
            raise ValueError(f"source '{self.source}' needs a path")
        if self.source in ("digits", "mnist1d", "stdlib-text") and self.path is not None:
            raise ValueError(f"source '{self.source}' is built in and takes no path")
        text_keys = [k for k in ("length", "snippets_per_class") if getattr(self, k) is not None]
        if text_keys and self.source not in ("stdlib-text", "text"):
            raise ValueError(f"{_keys_are(text_keys)} of the text sources (stdlib-text, text), not of source '{self.source}'")
        image_keys = [k for k in ("image_size", "channels") if getattr(self, k) is not None]
        if image_keys and self.source not in IMAGE_SOURCES:
            raise ValueError(f"{_keys_are(image_keys)} of the image sources (digits, imagefolder), not of source "
                             f"'{self.source}'" + (" (save the arrays at the size and channels the model takes)"
                                                   if self.source == "npz" else ""))
        if self.channel_order is not None and self.source != "imagefolder":
            raise ValueError(f"'channel_order' is a key of source 'imagefolder', not of source '{self.source}'")
        if self.channel_order is not None and self.channels != 3:
            raise ValueError(f"'channel_order' needs 3 channels (channels: 3); channels is {self.channels}")
        if self.normalize is not None and self.source in ("stdlib-text", "text"):
            raise ValueError(f"'normalize' is a key of the image sources (digits, imagefolder, npz), not of source "
                             f"'{self.source}' (its inputs are byte values)")
        return self


def _keys_are(keys: list[str]) -> str:
    return f"{' and '.join(map(repr, keys))} {'are keys' if len(keys) > 1 else 'is a key'}"


class TeacherConfig(Strict):
    model: ModelSpec
    train: TrainConfig = TrainConfig()
    weights: Path | None = Field(None, description=".safetensors, or a .pt/.pth state dict (loaded with weights_only=True)")


class FromTeacher(Strict):
    """A student derived from a built-in teacher: fractions of its width and depth (DistilBERT-style)."""

    width: float = Field(0.5, gt=0, le=1, description="fraction of the teacher's width (rounded, at least 1)")
    depth: float = Field(1.0, gt=0, le=1, description="fraction of the teacher's depth (rounded, at least 1)")


class StudentConfig(Strict):
    model: ModelSpec | None = Field(None, description="filled in from the teacher when from_teacher is given")
    from_teacher: FromTeacher | None = Field(None, description="derive the architecture from the teacher; the first "
                                                               "distill stage starts from the teacher's weights")
    weights: Path | None = None

    @model_validator(mode="after")
    def _one_architecture(self):
        if self.model is None:
            raise ValueError("give the student a 'model' or 'from_teacher: {width: 0.25, depth: 0.5}'")
        return self


class BenchConfig(Strict):
    batch: int = Field(64, ge=1, le=4096, description="the large batch timed with all threads")
    threads: int = Field(0, ge=0, description="threads for the large batch; 0 = all cores")
    rounds: int = Field(30, ge=3, description="interleaved rounds per model")
    calls: int = Field(20, ge=1, description="timed calls per model per round")


StageUnion = Annotated[Union[tuple(spec.config for spec in STAGES.values())],  # noqa: UP007 - built at import
                       Field(discriminator="type")]


class Recipe(RecipeBase):
    """A classification recipe (``task: classify``, the default): images, tabular rows or text labels."""

    task: Literal["classify"] = "classify"
    data: DataConfig = DataConfig()
    teacher: TeacherConfig
    student: StudentConfig
    stages: list[StageUnion] = Field(min_length=1)  # type: ignore[valid-type]
    bench: BenchConfig = BenchConfig()

    @model_validator(mode="before")
    @classmethod
    def _derive_student(cls, data):
        """``student: {from_teacher: {...}}`` -> the student's ``model``, from a built-in teacher's spec."""
        try:
            derive, teacher_model = data["student"]["from_teacher"], data["teacher"]["model"]
        except (KeyError, TypeError):
            return data
        if derive is None or not isinstance(teacher_model, dict) or not isinstance(derive, dict):
            return data
        if "model" in data["student"]:
            raise ValueError("student: give either 'model' or 'from_teacher', not both")
        if "arch" not in teacher_model:
            raise ValueError("student.from_teacher needs a built-in teacher (teacher.model.arch: cnn or mlp)")
        w, d = derive.get("width", 0.5), derive.get("depth", 1.0)
        if not all(isinstance(v, (int, float)) and 0 < v <= 1 for v in (w, d)):
            return data  # FromTeacher reports the bad value at its key
        width = max(1, round(teacher_model.get("width", 16) * w))
        depth = max(1, round(teacher_model.get("depth", 2) * d))
        model = {"arch": teacher_model["arch"], "width": width, "depth": depth}
        if "patch" in teacher_model:  # the input's tokenisation, not a size: the student reads the data the same way
            model["patch"] = teacher_model["patch"]
        student = {**data["student"], "model": model}
        return {**data, "student": student}



# --- loading -------------------------------------------------------------------------------------


def _line_map(node, paths: dict, path=(), out=None) -> dict[tuple, int]:
    """Key path -> 1-based line, read off the YAML node tree (``yaml.compose`` is as safe as safe_load).

    ``paths`` collects ``id(mapping node) -> key path`` (for the duplicate-key message). The recursion is
    bounded: _scan_events has refused anything nested deeper than MAX_YAML_DEPTH.
    """
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        paths[id(node)] = path
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                continue  # a list or mapping as a key: construction refuses it (unhashable key), at its line
            out[path + (k.value,)] = k.start_mark.line + 1
            _line_map(v, paths, path + (k.value,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (i,)] = item.start_mark.line + 1
            _line_map(item, paths, path + (i,), out)
    return out


def _data_path(data, loc) -> tuple:
    """Drop pydantic's union tags from an error location so that it matches the YAML key path."""
    out, cur = [], data
    for i, part in enumerate(loc):
        if isinstance(cur, dict) and part in cur or isinstance(cur, list) and isinstance(part, int) and part < len(cur):
            out.append(part)
            cur = cur[part]
        elif i == len(loc) - 1 and not (isinstance(cur, dict) and part in (cur.get("type"), cur.get("kind"))):
            out.append(part)  # a missing key (not a discriminated-union tag): reported under its parent's line
    return tuple(out)


def _model_at(data, path: tuple, tp) -> type[BaseModel] | None:
    """The pydantic model class that holds the keys at ``path`` (a key path into ``data``, every part present) below
    the annotation ``tp``: lists and Optional unwrapped, a discriminated union (a stage's ``type``, a loss's
    ``kind``) resolved to the member the data names."""
    parts = list(path)
    while True:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is Union or origin is types.UnionType:
            members = [a for a in args if a is not type(None)]
            tp = members[0] if len(members) == 1 else None
        elif origin is Annotated:
            tag = getattr(args[1], "discriminator", None)
            tp = next((m for m in typing.get_args(args[0]) if tag and isinstance(data, dict)
                       and data.get(tag) in typing.get_args(m.model_fields[tag].annotation)), None)
        elif not parts:
            return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None
        elif origin in (list, tuple) and isinstance(parts[0], int):
            tp, data = args[0], data[parts.pop(0)]
        elif isinstance(tp, type) and issubclass(tp, BaseModel) and parts[0] in tp.model_fields:
            tp, data = tp.model_fields[parts[0]].annotation, data[parts.pop(0)]
        else:
            return None


def _hint(got, choices) -> str:
    close = difflib.get_close_matches(str(got), choices, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""


def _message(err: dict, data: dict, schema: type[BaseModel]) -> tuple[tuple, str]:
    loc = _data_path(data, err["loc"])
    kind, ctx = err["type"], err.get("ctx", {})
    if kind == "extra_forbidden":
        key = loc[-1]
        parent = _model_at(data, loc[:-1], schema)
        valid = [f.alias or n for n, f in parent.model_fields.items() if not f.exclude] if parent else []
        return loc, f"unknown key '{key}'; {_hint(key, valid)}valid keys: {', '.join(valid)}"
    if kind == "missing":
        return loc, "required key is missing"
    if kind in ("union_tag_invalid", "union_tag_not_found"):  # a stage's type, or a loss's kind
        from compress.losses import LOSSES

        loss = "kind" in str(ctx.get("discriminator", ""))
        stage_types = sorted(stages_for(data.get("task", "classify")))
        tag, what, choices = ("kind", "loss", sorted(LOSSES)) if loss else ("type", "stage", stage_types)
        got = ctx.get("tag")
        path = loc if loc and loc[-1] == tag else loc + (tag,)
        problem = f"unknown {what} {tag} '{got}'" if got is not None else f"{'a loss' if loss else 'stage'} needs a '{tag}'"
        return path, f"{problem}; {_hint(got, choices)}valid choices: {', '.join(choices)}"
    if kind in ("literal_error", "enum"):
        expected = ctx.get("expected", "")
        choices = [a or b for a, b in re.findall(r"'([^']*)'|(-?\d+)", expected)]
        got = err.get("input")
        return loc, f"invalid value {got!r}; {_hint(got, choices)}valid choices: {', '.join(choices)}"
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    if kind not in ("model_type", "dict_type") and not isinstance(got, (dict, list)):
        msg += f" (got {got!r})"
    return loc, msg


def parse_recipe(data: Any, file: str | None = None, lines: dict[tuple, int] | None = None) -> RecipeBase:
    """Validate an already-loaded mapping as the recipe of its ``task`` (``classify`` when absent); raise
    RecipeError naming file, line, key path and choices."""
    lines = lines or {}
    if not isinstance(data, dict):
        raise RecipeError(f"a recipe is a YAML mapping of keys (got {type(data).__name__})", file, lines.get((), None))
    classes = {"classify": Recipe, "lm": LMRecipe}
    task = data.get("task", "classify")
    if not isinstance(task, str) or task not in classes:  # a mapping or a list is not hashable: named, not a TypeError
        raise RecipeError(f"invalid value {task!r}; valid choices: {', '.join(classes)}", file, lines.get(("task",)), "task")
    stages = data.get("stages")
    for i, st in enumerate(stages if isinstance(stages, list) else []):
        if not isinstance(st, dict):
            raise RecipeError(f"a stage is a mapping with a 'type' (got {st!r})", file, lines.get(("stages", i)), f"stages[{i}]")
    recipe = validate_schema(classes[task], data, file, lines)
    recipe._lines = dict(lines)
    recipe.check()
    if file is not None:
        _factory_base(recipe, Path(file).parent)
    return recipe


def recipe_and_data(report: dict, load: Any, digest: str) -> tuple[RecipeBase | None, Any]:
    """``(recipe, data)`` for the recipe a report.json holds (how compress check re-measures): the data read by the
    task's ``load(data, seed)``, whose ``digest`` attribute must equal the report's ``data.<digest>``; or
    ``(None, why)`` when the recipe or its data cannot be loaded as they were."""
    try:
        recipe = parse_recipe(dict(report["recipe"]), report.get("recipe_file"))
        data = recipe.load_data(load)
    except CompressError as exc:
        return None, f"the recipe or data in the report cannot be loaded: {str(exc).splitlines()[0]}"
    if getattr(data, digest) != report["data"].get(digest):
        return None, f"the data named in the report changed since the run (its {digest} differs)"
    return recipe, data


def _factory_base(recipe, folder: Path) -> None:
    """Every factory model of the recipe (teacher, student, chain steps, ensemble members) looks for its module in the
    recipe's folder first (compress.models.build_model), as a user whose module sits beside the recipe expects."""
    from compress.models import set_factory_base

    for spec in nodes(recipe):
        if isinstance(spec, ModelSpec) and spec.factory is not None:
            set_factory_base(spec, folder)


def validate_schema(schema: type[BaseModel], data: dict, file: str | None, lines: dict[tuple, int]):
    """``schema.model_validate`` with every error turned into a RecipeError naming file:line:key and the choices."""
    try:
        return schema.model_validate({**data, "source_file": file})
    except ValidationError as exc:
        # Unknown keys first: a typo usually explains the "missing" error that comes with it.
        errors = sorted(exc.errors(include_url=False), key=lambda e: e["type"] != "extra_forbidden")
        found = []
        for err in errors[:5]:
            loc, msg = _message(err, data, schema)
            line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), None)
            found.append(RecipeError(msg, file, line, key_path(loc) or None))
        first = found[0]
        if len(found) > 1:
            more = "".join(f"\n  also: {e}" for e in found[1:])
            raise RecipeError(first.message + more, file, first.line, first.key) from None
        raise first from None


class _DuplicateKey(yaml.MarkedYAMLError):
    """Raised by _RecipeLoader: the same key twice in one mapping."""

    def __init__(self, key, path: tuple, first_line: int, mark):
        super().__init__(problem=f"duplicate key {key!r} (first at line {first_line})", problem_mark=mark)
        self.key_path = path + (key,)


class _RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (safe_load keeps the last one silently:
    ``epochs: 2`` then ``epochs: 5000`` would train 5000)."""

    def __init__(self, stream, paths: dict[int, tuple]):
        super().__init__(stream)
        self._paths = paths  # id(mapping node) -> its key path, from _line_map

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}  # key -> line of its first occurrence
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: the base class reports it
                if first is not None:
                    raise _DuplicateKey(key, self._paths.get(id(node), ()), first, key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _scan_events(text: str, file: str) -> None:
    """Refuse anchors and aliases, deep nesting and too many nodes from the parser's events, before anything is
    composed or expanded (ten lines of nested aliases expand to a billion values: "billion laughs")."""
    depth = events = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        events += 1
        line = event.start_mark.line + 1 if event.start_mark else None
        if events > MAX_YAML_EVENTS:
            raise RecipeError(f"recipe has more than {MAX_YAML_EVENTS:,} YAML nodes (keys, values, brackets); "
                              "a recipe is a short list of settings", file, line)
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            what = f"alias '*{event.anchor}'" if isinstance(event, yaml.AliasEvent) else f"anchor '&{event.anchor}'"
            raise RecipeError(f"YAML anchors and aliases (&name, *name) are refused (found {what}); recipes are "
                              "plain data: write the values out", file, line)
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise RecipeError(f"recipe nests mappings and lists more than {MAX_YAML_DEPTH} levels deep; "
                                  "a recipe is a short list of settings", file, line)
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _read_text(path: Path, file: str) -> str:
    """The recipe's text: a regular file of at most MAX_RECIPE_BYTES of UTF-8 (checked before it is read)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise RecipeError("recipe file not found", file) from None
    except OSError as exc:
        raise RecipeError(f"recipe file cannot be read ({exc.strerror or exc})", file) from None
    if stat.S_ISDIR(st.st_mode):
        raise RecipeError("recipe path is a directory, not a YAML file", file)
    if not stat.S_ISREG(st.st_mode):
        raise RecipeError(f"recipe path is {file_kind(st.st_mode)}, not a regular file", file)
    if st.st_size > MAX_RECIPE_BYTES:
        raise RecipeError(f"recipe file is {st.st_size:,} bytes ({fmt_bytes(st.st_size)}); the limit is "
                          f"{MAX_RECIPE_BYTES:,} bytes (1 MB): a recipe is a short list of settings", file)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)  # the file may have grown since stat
    except OSError as exc:
        raise RecipeError(f"recipe file cannot be read ({exc.strerror or exc})", file) from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(f"recipe file is over {MAX_RECIPE_BYTES:,} bytes, the limit (1 MB): a recipe is a short "
                          "list of settings", file)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"recipe is not UTF-8 text ({exc.reason} at byte {exc.start})", file) from None


def read_yaml(path: str | Path) -> tuple[Any, dict[tuple, int]]:
    """A recipe file's data (``yaml.safe_load`` semantics) and its key-path -> line map; RecipeError if unreadable.

    Bounded before anything is built: the file is at most MAX_RECIPE_BYTES; anchors and aliases are refused,
    and nesting and node count capped, from the parser's events (_scan_events); a key given twice in one
    mapping is an error naming both lines.
    """
    path = Path(path)
    file = str(path)
    text = _read_text(path, file)
    paths: dict[int, tuple] = {}
    try:
        _scan_events(text, file)
        loader = _RecipeLoader(text, paths)
        try:
            node = loader.get_single_node()  # composed once: the line map and the data come from the same nodes
            lines = _line_map(node, paths) if node is not None else {}
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except _DuplicateKey as exc:
        mark = exc.problem_mark
        raise RecipeError(exc.problem, file, mark.line + 1, key_path(exc.key_path)) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or str(exc)
        if "could not determine a constructor" in problem:
            problem = f"YAML tags that run code are refused ({problem.split('tag ')[-1]}); recipes are plain data"
        raise RecipeError(problem, file, mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"invalid YAML: {exc}", file) from None
    if data is None:
        raise RecipeError("recipe is empty", file)
    return data, lines


def load_recipe(path: str | Path) -> RecipeBase:
    """Read a YAML recipe with ``yaml.safe_load`` semantics and validate it as the recipe of its ``task``
    (``Recipe`` for classify, ``compress.lm.recipe.LMRecipe`` for lm); no compute, no file access but its own
    (and, for a Hugging Face folder, its config and headers). Relative paths are relative to the recipe file."""
    path = Path(path)
    data, lines = read_yaml(path)
    recipe = parse_recipe(data, str(path), lines)
    fixed = recipe.resolve_paths(path.parent)  # a model_copy: it keeps the line map
    fixed.check_files()
    return fixed

