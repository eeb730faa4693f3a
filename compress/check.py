"""``compress check``: compare a run with a committed baseline; a regression is a distinct exit code for CI.

The gate believes only what it measures: the model files must have the sha256 their report.json recorded, size
is read from the files, accuracy is measured again from the final file when the report's recipe and data load
(else the verdict says "taken from report.json, not re-measured"), and latency is measured again as the ratio of
the final model's time to the teacher's, both timed in the same interleaved rounds (``bench.time_rounds``):
machine speed and most of its noise cancel in the ratio, so a baseline recorded on one machine can be
compared on another CI runner. The run **regressed** only when the *lower* bound of the 95 % interval of
``ratio / baseline_ratio`` (``latency_ratio``, ``relative_interval``) exceeds ``1 + tolerance``; an estimate above
the tolerance whose interval still reaches below it is ``noisy`` (rerun with more ``--rounds``). The statistics
in full, with the measurements behind them: docs/ci-gate.md.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compress.errors import CompressError
from compress.schema import BASELINE_VERSION, Baseline, Report, SchemaError, read_report

__all__ = ["Tolerances", "Verdict", "Run", "latency_ratio", "relative_interval", "load_run", "verify_files",
           "measure", "measure_files", "compare", "baseline_from", "summary_markdown", "write_summary",
           "CheckInputError", "EXIT_REGRESSED", "BOOTSTRAP"]

EXIT_REGRESSED = 3  # 0 pass, 1 crash, 2 bad input, 3 regression: CI can tell "regressed" from "crashed"
BOOTSTRAP = 2000


class CheckInputError(CompressError):
    """The run to check is inconsistent (a file changed since its report, a report that its file contradicts)."""

    exit_code = 2


@dataclass(frozen=True)
class Tolerances:
    metric: float = 0.01  # in the metric's units: 0.01 = one accuracy point worse than the baseline is still a pass
    size: float = 0.05  # relative: the final file may grow 5 %
    latency: float = 0.10  # relative: final/teacher ratio may grow 10 % beyond the baseline's

    def __post_init__(self):
        for name, v in vars(self).items():
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise SchemaError(f"tolerance {name}: must be a finite number >= 0 (got {v!r})")


@dataclass
class Verdict:
    metric: str
    baseline: float
    current: float
    limit: str
    status: str  # "ok" | "noisy" | "regressed"
    detail: str = ""


@dataclass
class CheckResult:
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(v.status == "regressed" for v in self.verdicts)


@dataclass
class Run:
    """A run to check: its report (as written, and validated) and the folder its files are in."""

    report: dict
    schema: Report
    folder: Path


def latency_ratio(samples_final: np.ndarray, samples_teacher: np.ndarray, seed: int = 0,
                  bootstrap: int = BOOTSTRAP) -> dict:
    """Geometric mean of per-round median ratios, with a 95 % percentile-bootstrap interval over rounds, from
    per-call times of shape (rounds, calls) measured in the same ``time_rounds`` call."""
    per_round = np.median(samples_final, axis=1) / np.median(samples_teacher, axis=1)
    logs = np.log(per_round)
    rng = np.random.default_rng(seed)
    boot = logs[rng.integers(0, len(logs), size=(bootstrap, len(logs)))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"ratio": float(np.exp(logs.mean())), "ci95": [float(np.exp(lo)), float(np.exp(hi))],
            "rounds": int(len(logs)), "per_round": [round(float(r), 5) for r in per_round]}


# --- the run ----------------------------------------------------------------------------------------


def load_run(target: str | Path, output: str | None = None, quiet: bool = True) -> Run:
    """A run from report.json, its folder, or a recipe. A recipe is run first into its own folder,
    ``<output>/<name>.check/`` (sharing the cache of ``<output>``), so the gate never rewrites a run's report."""
    target = Path(target)
    if target.suffix in (".yaml", ".yml"):
        from compress import pipeline
        from compress.recipe import load_recipe

        recipe = load_recipe(target)
        report = pipeline.run(recipe, output=output, quiet=quiet, folder=f"{recipe.name}.check")
        target = Path(report["files"]["report_json"])
    path = target / "report.json" if target.is_dir() else target
    if not path.is_file():
        raise SchemaError(f"{target}: not a recipe (.yaml), a report.json or a folder holding one")
    report, schema = read_report(path)
    return Run(report, schema, path.parent)


def _model_file(run: Run, rel: str) -> Path:
    """A model file named by the report, looked up in the report's own folder (never by an absolute path)."""
    from compress._io import inside

    try:
        return inside(run.folder, rel)
    except CompressError as exc:
        raise CheckInputError(f"{run.folder / 'report.json'} names the model file {rel!r}: {exc}") from None


def verify_files(run: Run) -> dict[str, Path]:
    """Every model file of the report that is present must have the sha256 the report recorded; the final
    model's and the teacher's must be present. Returns their paths by role."""
    from compress.cache import sha256_file

    where = run.folder / "report.json"
    needed = {m.file: m.role for m in run.schema.models if m.role in ("final", "teacher")}
    for rel, rec in run.schema.digests.items():
        path = _model_file(run, rel)
        if not path.is_file():
            if rel in needed:
                raise CheckInputError(f"model file {path} named in {where} does not exist (the {needed[rel]} model)")
            continue  # a report copied with only its final and teacher files (a CI artifact)
        size, digest = path.stat().st_size, sha256_file(path)
        if digest != rec.sha256 or size != rec.size_bytes:
            raise CheckInputError(f"model file changed since the report: {path} has sha256 {digest[:16]}... "
                                  f"({size:,} bytes), {where} records {rec.sha256[:16]}... ({rec.size_bytes:,} bytes)")
    return {role: _model_file(run, rel) for rel, role in needed.items()}


def measure(run: Run, *, accuracy: tuple[float | None, str] | None = None, **timing) -> dict:
    """The run's quality metric (the task's ``remeasure`` of the final file; the report's value, with the reason,
    when the recipe or data in the report cannot be loaded as they were), size (from the file) and a fresh
    final/teacher latency ratio (``timing``: ``_latency``'s options). ``accuracy``: an earlier ``remeasure``
    result to reuse (``--update-baseline`` measures latency several times)."""
    from compress.pipeline import task_named

    paths, task = verify_files(run), task_named(run.schema.task)
    final = run.schema.model("final")
    value, how = accuracy if accuracy is not None else task.remeasure(run.report, paths["final"])
    if value is None:
        value, how = final.metric.value, f"{final.metric.name} taken from report.json, not re-measured ({how})"
    elif abs(value - final.metric.value) > task.disagreement(run.report):
        raise CheckInputError(f"report.json does not match its model file: it says {final.metric.name} "
                              f"{final.metric.value:.4f}, {paths['final'].name} measures {value:.4f} on the test "
                              f"split; the report or the file was edited (rerun the recipe)")
    metric = {"name": final.metric.name, "value": value, "higher_is_better": final.metric.higher_is_better}
    return {**measure_files(paths["final"], paths["teacher"], metric, task=run.schema.task, **timing),
            "name": run.report.get("name"), "cpu": run.report.get("cpu"), "metric_source": how}


def _latency(final: Path, teacher: Path, *, rounds: int = 30, calls: int = 20, batch: int = 1, threads: int = 1,
             seed: int = 0, task: str = "classify") -> dict:
    """The final/teacher time ratio, both timed in the same interleaved rounds by the task's own timer (a classifier's
    forward pass; a language model's greedy decode with the KV cache)."""
    from compress.bench import time_rounds
    from compress.pipeline import task_named

    timers = task_named(task).timers({"final": final, "teacher": teacher}, batch=batch, threads=threads)
    samples = time_rounds(timers, rounds=rounds, calls=calls, seed=seed)
    ratio = latency_ratio(samples["final"], samples["teacher"], seed=seed)
    ratio.update(batch=batch, threads=threads, calls=calls)
    return ratio


def measure_files(final: str | Path, teacher: str | Path, metric: dict | None = None, **kw) -> dict:
    """``measure`` for two model files without a report: size from the file, ``metric`` as given (or none)."""
    return {"name": None, "cpu": None, "size_bytes": Path(final).stat().st_size, "metric": metric,
            "metric_source": "given", "latency_ratio": _latency(Path(final), Path(teacher), **kw)}


# --- baseline and verdicts -------------------------------------------------------------------------


def baseline_from(current: dict | list[dict], tol: Tolerances) -> dict:
    """What ``--update-baseline`` writes (schema: compress.schema.Baseline): the measured values and their tolerances.

    ``current`` may be several independent measurements (fresh sessions each): their geometric mean is
    the baseline ratio and the standard deviation of their log ratios is ``run_sd_log``.
    """
    runs = current if isinstance(current, list) else [current]
    first = runs[0]
    if not first.get("metric"):
        raise CheckInputError("a baseline needs the run's quality metric (measure a report, not bare files)")
    lat = {k: v for k, v in first["latency_ratio"].items() if k != "per_round"}
    if len(runs) > 1:
        logs = np.log([r["latency_ratio"]["ratio"] for r in runs])
        sd = float(logs.std(ddof=1))
        se = sd / np.sqrt(len(logs))
        lat.update(ratio=float(np.exp(logs.mean())), ci95=[float(np.exp(logs.mean() - 1.96 * se)),
                                                            float(np.exp(logs.mean() + 1.96 * se))],
                   repeats=len(runs), run_sd_log=sd, ratios=[round(float(np.exp(v)), 5) for v in logs])
    base = {"schema_version": BASELINE_VERSION, "name": first.get("name"),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": first.get("cpu") or {},
            "metric": first["metric"], "size_bytes": first["size_bytes"], "latency_ratio": lat,
            "tolerance": {first["metric"]["name"]: tol.metric, "size": tol.size, "latency": tol.latency}}
    Baseline.model_validate(base)  # never write a baseline the gate would refuse to read
    return base


def tolerances(baseline: Baseline | None, metric: float | None = None, size: float | None = None,
               latency: float | None = None) -> Tolerances:
    """The baseline's tolerances (without one: the defaults), each overridden by a command-line value when given."""
    t = {} if baseline is None else {**baseline.tolerance, "metric": baseline.tolerance[baseline.metric.name]}
    given = {"metric": metric, "size": size, "latency": latency}
    return Tolerances(**{k: t[k] if v is None else v for k, v in given.items() if v is not None or k in t})


def compare(current: dict, baseline: Baseline, tol: Tolerances) -> CheckResult:
    """One verdict per metric; only a change beyond its tolerance (and, for latency, beyond the noise) fails."""
    res = CheckResult()
    bm, cm = baseline.metric, current.get("metric")
    if cm is not None:
        if cm["name"] != bm.name:
            raise CheckInputError(f"the baseline gates {bm.name!r} but the run reports {cm['name']!r}")
        worse = (bm.value - cm["value"]) if bm.higher_is_better else (cm["value"] - bm.value)
        limit = bm.value - tol.metric if bm.higher_is_better else bm.value + tol.metric
        scale, unit = (100, "points") if bm.name == "accuracy" else (1, "")
        res.verdicts.append(Verdict(bm.name, bm.value, cm["value"], f"{'>=' if bm.higher_is_better else '<='} {limit:.4f}",
                                    "regressed" if worse > tol.metric + 1e-12 else "ok",
                                    f"{-worse * scale + 0.0:+.2f} {unit} (tolerance {tol.metric * scale:.2f}); "
                                    f"{current.get('metric_source', '')}".replace("  ", " ")))
    growth = current["size_bytes"] / baseline.size_bytes - 1
    res.verdicts.append(Verdict("size_bytes", baseline.size_bytes, current["size_bytes"],
                                f"<= {baseline.size_bytes * (1 + tol.size):,.0f}", "regressed" if growth > tol.size else "ok",
                                f"{growth * 100:+.1f} % (tolerance {tol.size * 100:.0f} %), from the file"))
    lat_b, lat_c = baseline.latency_ratio.model_dump(), current["latency_ratio"]
    rel = lat_c["ratio"] / lat_b["ratio"]
    lo, hi = relative_interval(lat_c, lat_b)
    if lo > 1 + tol.latency:
        status, why = "regressed", "slower beyond the tolerance, outside the noise"
    elif rel > 1 + tol.latency:
        status, why = "noisy", "the estimate is beyond the tolerance but the interval is not: inside the noise; rerun with more --rounds"
    else:
        status, why = "ok", "within the tolerance"
    res.verdicts.append(Verdict(
        "latency final/teacher", lat_b["ratio"], lat_c["ratio"], f"CI low <= {1 + tol.latency:.2f}x baseline",
        status, f"{rel:.3f}x baseline (95 % CI {lo:.3f}-{hi:.3f}, {lat_c['rounds']} rounds, batch "
                f"{lat_c.get('batch', 1)}, {lat_c.get('threads', 1)} thread(s)): {why}"))
    return res


def _log_se(lat: dict) -> float:
    lo, hi = lat.get("ci95") or (lat["ratio"], lat["ratio"])
    return float(np.log(hi) - np.log(lo)) / (2 * 1.96)


def relative_interval(current: dict, baseline: dict) -> tuple[float, float]:
    """95 % interval of current ratio / baseline ratio: log-scale; the run's and the baseline's standard errors and
    the baseline's run-to-run ``run_sd_log`` (from ``repeats`` fresh sessions), in quadrature: a prediction interval
    for one new run."""
    half = 1.96 * float(np.sqrt(_log_se(current) ** 2 + _log_se(baseline) ** 2 + (baseline.get("run_sd_log") or 0.0) ** 2))
    log_rel = float(np.log(current["ratio"]) - np.log(baseline["ratio"]))
    return float(np.exp(log_rel - half)), float(np.exp(log_rel + half))


def summary_markdown(res: CheckResult, name: str | None = None, notes: list[str] | None = None) -> str:
    head = f"### compress check{': ' + name if name else ''}: {'REGRESSED' if res.failed else 'passed'}"
    lines = [head, "", "| metric | baseline | current | limit | verdict | detail |", "|---|---|---|---|---|---|"]
    for v in res.verdicts:
        fmt = (lambda a: f"{a:.4f}") if isinstance(v.baseline, float) else (lambda a: f"{a:,}")
        lines.append(f"| {v.metric} | {fmt(v.baseline)} | {fmt(v.current)} | {v.limit} | {v.status} | {v.detail} |")
    lines += [""] + [f"- {n}" for n in notes or []]
    return "\n".join(lines) + "\n"


def write_summary(text: str, path: str | Path | None) -> None:
    """Write ``text`` to ``path`` and append it to ``$GITHUB_STEP_SUMMARY`` when that is set."""
    if path:
        from compress._io import write_text

        write_text(path, text)
    step = os.environ.get("GITHUB_STEP_SUMMARY")
    if step:
        with open(step, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")
