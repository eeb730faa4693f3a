"""``report.json`` and the CI baseline: versioned, typed schemas, read strictly.

Both files are read back by ``compress check`` (and may come from another machine or a CI artifact), so
both are validated on read: an unknown or missing key, a non-finite number or a negative tolerance is
an error naming the file and the key. The quality entry is task-neutral, ``metric: {name, value,
higher_is_better}`` (``accuracy`` for classification; a language model's ``bits_per_byte`` fits the same
shape), so the gate compares any task's runs the same way.

report.json is at ``schema_version`` 3 (one schema for every task; what changed from 1 and 2: docs/report.md).
The baseline is at ``schema_version`` 2 (from 1: ``accuracy`` became ``metric``; ``tolerance`` is keyed by the
metric's name, ``size`` and ``latency``; every key is required and checked); a version-1 baseline is refused
with the command that regenerates it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from compress.errors import CompressError, key_path

__all__ = ["REPORT_VERSION", "BASELINE_VERSION", "Metric", "FileDigest", "ReportModel", "Report", "LatencyRatio",
           "Baseline", "SchemaError", "read_json", "read_report", "read_baseline", "validate_report"]

REPORT_VERSION = 3
BASELINE_VERSION = 2
MAX_JSON_BYTES = 64 << 20  # a report of a few hundred models is well under 1 MB; refuse anything absurd before parsing

Finite = Annotated[float, Field(allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
_REL = re.compile(r"^(?!/)(?!.*(^|/)\.\.?(/|$))[A-Za-z0-9._/-]{1,255}$")


class SchemaError(CompressError):
    """A report or baseline that does not follow its schema (bad input: exit code 2)."""

    exit_code = 2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Metric(_Strict):
    """A model's quality on the held-out test split: ``accuracy`` (classify) or ``bits_per_byte`` (lm)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    value: Finite
    higher_is_better: bool


class FileDigest(_Strict):
    sha256: Sha256
    size_bytes: int = Field(ge=0)


def _relative(value: str) -> str:
    if not _REL.match(value):
        raise ValueError("not a relative path inside the run folder")
    return value


RelPath = Annotated[str, AfterValidator(_relative)]


class ReportModel(_Open):
    """One measured model; latency, parameters, stage facts and the like are further keys."""

    name: str
    role: Literal["teacher", "scratch", "assistant", "stage", "final"]
    file: RelPath
    sha256: Sha256
    size_bytes: int = Field(ge=0)
    metric: Metric


class Report(_Open):
    schema_version: Literal[3]
    task: Literal["classify", "lm"]
    name: str
    recipe_file: str | None = None
    recipe: dict
    data: dict
    models: list[ReportModel] = Field(min_length=1)
    digests: dict[RelPath, FileDigest]

    @model_validator(mode="after")
    def _consistent(self):
        roles = [m.role for m in self.models]
        for role in ("teacher", "final"):
            if roles.count(role) != 1:
                raise ValueError(f"a report has exactly one model with role '{role}' (found {roles.count(role)})")
        for m in self.models:
            d = self.digests.get(m.file)
            if d is None or d.sha256 != m.sha256 or d.size_bytes != m.size_bytes:
                raise ValueError(f"model {m.name!r}: its file {m.file} is not listed in 'digests' with the same sha256 and size")
        return self

    def model(self, role: str) -> ReportModel:
        return next(m for m in self.models if m.role == role)


class LatencyRatio(_Strict):
    """The final model's latency over the teacher's, timed interleaved (compress.check)."""

    ratio: Positive
    ci95: tuple[Positive, Positive]
    rounds: int = Field(ge=1)
    batch: int = Field(ge=1)
    threads: int = Field(ge=0)
    calls: int = Field(ge=1)
    repeats: int | None = Field(None, ge=1)
    run_sd_log: NonNegative | None = None
    ratios: list[Positive] | None = None

    @model_validator(mode="after")
    def _interval(self):
        if not self.ci95[0] <= self.ratio <= self.ci95[1]:
            raise ValueError(f"ci95 {list(self.ci95)} does not contain the ratio {self.ratio}")
        return self


class Baseline(_Strict):
    schema_version: Literal[2]
    name: str | None
    created: str
    cpu: dict
    metric: Metric
    size_bytes: int = Field(gt=0)
    latency_ratio: LatencyRatio
    tolerance: dict[str, NonNegative]

    @model_validator(mode="after")
    def _tolerances(self):
        want = {self.metric.name, "size", "latency"}
        got = set(self.tolerance)
        if got != want:
            missing, unknown = sorted(want - got), sorted(got - want)
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(unknown)}"] if unknown else [])
            raise ValueError(f"tolerance needs exactly the keys {', '.join(sorted(want))} ({'; '.join(parts)})")
        return self


def refuse_constant(name: str):  # json.loads' parse_constant (also the cache's): NaN and Infinity are not JSON
    raise ValueError(f"{name} is not a number JSON allows")


def read_json(path: str | Path, what: str) -> Any:
    """A JSON file's content; NaN/Infinity, files over MAX_JSON_BYTES and non-regular files are refused."""
    from compress._limits import regular_file

    path = Path(path)
    st = regular_file(path, f"{path}: the {what}", SchemaError)
    if st.st_size > MAX_JSON_BYTES:
        raise SchemaError(f"{path}: {st.st_size:,} bytes is too large for a {what} (limit {MAX_JSON_BYTES:,})")
    try:
        return json.loads(path.read_bytes(), parse_constant=refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: "[[[[..." nested past the limit
        raise SchemaError(f"{path}: the {what} is not valid JSON ({exc})") from None


def _validate(cls, data: Any, path: str | Path, what: str, hint: str = ""):
    if not isinstance(data, dict):
        raise SchemaError(f"{path}: a {what} is a JSON object (got {type(data).__name__})")
    if not data:
        raise SchemaError(f"{path}: the {what} is empty ({{}}){hint}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False)[:5]:
            plain = {"extra_forbidden": "unknown key", "missing": "required key is missing"}.get(err["type"])
            msg, got = plain or err["msg"].removeprefix("Value error, "), err.get("input")
            if plain is None and isinstance(got, (int, float, str)) and not isinstance(got, bool):
                msg += f" (got {got!r})"
            loc = err["loc"][:-1] if err["loc"][-1:] == ("[key]",) else err["loc"]  # a dict key's own error
            lines.append(f"{key_path(loc) or '(top level)'}: {msg}")
        raise SchemaError(f"{path}: invalid {what}: " + "; ".join(lines) + hint) from None


def validate_report(report: dict, where: str = "report.json") -> Report:
    return _validate(Report, report, where, "report")


def read_report(path: str | Path) -> tuple[dict, Report]:
    """The report as written (a dict) and its validated schema view."""
    data = read_json(path, "report")
    version = data.get("schema_version") if isinstance(data, dict) else None
    if isinstance(data, dict) and version != REPORT_VERSION and "models" in data:
        raise SchemaError(f"{path}: report schema_version {version!r} is not {REPORT_VERSION}; rerun the recipe with "
                          "this version of compress to write a current report")
    return data, _validate(Report, data, path, "report")


def read_baseline(path: str | Path) -> Baseline:
    data = read_json(path, "baseline")
    regen = "; regenerate it: compress check RUN --baseline FILE --update-baseline"
    if isinstance(data, dict) and data.get("schema_version") == 1:
        raise SchemaError(f"{path}: baseline schema_version 1 is no longer read (version {BASELINE_VERSION} records "
                          f"a task-neutral metric and per-metric tolerances){regen}")
    return _validate(Baseline, data, path, "baseline", regen)
