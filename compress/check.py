"""``compress check``: compare a run with a committed baseline; a regression is a distinct exit code for CI.

Accuracy and size are read from the run's report. Latency is measured again here, as the ratio of the
final model's time to the teacher's, both timed in the same interleaved rounds (``bench.time_rounds``):
machine speed and most of its noise cancel in the ratio, so a baseline recorded on one machine can be
compared on another CI runner. The statistics:

1. Each round times the final model and the teacher back to back (``calls`` calls each, shuffled order);
   the round's statistic is ``median(final calls) / median(teacher calls)``.
2. The estimate is the geometric mean of the per-round ratios, and its 95 % confidence interval is a
   percentile bootstrap over rounds (``BOOTSTRAP`` resamples, seeded).
3. Compared with the baseline ratio, the run **regressed** only when the *lower* bound of the 95 %
   interval of ``ratio / baseline_ratio`` exceeds ``1 + tolerance``: the slowdown is larger than the
   tolerance even at the optimistic end of the noise. That interval is on the log scale, with the
   run's and the baseline's standard errors (each from its bootstrap interval, (log hi - log lo) / 3.92)
   added in quadrature: the baseline was measured with noise too. Rounds of one process share its
   sessions and its moment, so they miss the run-to-run spread (fresh sessions, another minute of a
   shared machine): ``--update-baseline`` therefore measures ``repeats`` independent times (fresh
   sessions each) and stores the standard deviation of their log ratios (``run_sd_log``), which joins
   the quadrature sum. The result is a prediction interval for one new run. A point estimate above the tolerance
   with an interval that still reaches below it is reported as ``noisy`` (not a failure; rerun with
   more ``--rounds``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compress.errors import CompressError

__all__ = ["Tolerances", "Verdict", "latency_ratio", "relative_interval", "load_run", "measure", "measure_files",
           "compare", "baseline_from", "summary_markdown", "write_summary", "EXIT_REGRESSED", "BOOTSTRAP"]

EXIT_REGRESSED = 3  # 0 pass, 1 crash, 2 bad input, 3 regression: CI can tell "regressed" from "crashed"
BOOTSTRAP = 2000
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Tolerances:
    accuracy: float = 0.01  # absolute: 0.01 = one accuracy point below the baseline is still a pass
    size: float = 0.05  # relative: the final file may grow 5 %
    latency: float = 0.10  # relative: final/teacher ratio may grow 10 % beyond the baseline's


@dataclass
class Verdict:
    metric: str
    baseline: float
    current: float
    limit: str
    status: str  # "ok" | "noisy" | "regressed"
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "regressed"


@dataclass
class CheckResult:
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(v.failed for v in self.verdicts)


def latency_ratio(samples_final: np.ndarray, samples_teacher: np.ndarray, seed: int = 0,
                  bootstrap: int = BOOTSTRAP) -> dict:
    """Geometric mean of per-round median ratios, with a 95 % percentile-bootstrap interval over rounds.

    Args:
        samples_final, samples_teacher: per-call times, shape (rounds, calls), from the same ``time_rounds`` call.
    """
    per_round = np.median(samples_final, axis=1) / np.median(samples_teacher, axis=1)
    logs = np.log(per_round)
    rng = np.random.default_rng(seed)
    boot = logs[rng.integers(0, len(logs), size=(bootstrap, len(logs)))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"ratio": float(np.exp(logs.mean())), "ci95": [float(np.exp(lo)), float(np.exp(hi))],
            "rounds": int(len(logs)), "per_round": [round(float(r), 5) for r in per_round]}


def _resolve(path: str, report_dir: Path) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    if (report_dir / p.name).is_file():  # the report moved with its folder (e.g. a CI artifact)
        return report_dir / p.name
    raise CompressError(f"model file {path} named in {report_dir / 'report.json'} does not exist")


def load_run(target: str | Path, output: str | None = None, quiet: bool = True) -> tuple[dict, Path]:
    """A report and its folder, from report.json, its folder, or a recipe (which is run first)."""
    target = Path(target)
    if target.suffix in (".yaml", ".yml"):
        from compress.pipeline import run
        from compress.recipe import load_recipe

        report = run(load_recipe(target), output=output, quiet=quiet)
        return report, Path(report["files"]["dir"])
    path = target / "report.json" if target.is_dir() else target
    if not path.is_file():
        raise CompressError(f"{target}: not a recipe (.yaml), a report.json or a folder holding one")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CompressError(f"{path}: not valid JSON ({exc})") from None
    if "models" not in report:
        raise CompressError(f"{path}: not a compress report (no 'models')")
    return report, path.parent


def measure(report: dict, report_dir: Path, *, rounds: int = 30, calls: int = 20, batch: int = 1, threads: int = 1,
            seed: int = 0) -> dict:
    """The run's accuracy, size and a fresh final/teacher latency ratio (ORT, interleaved rounds)."""
    from compress.bench import _batch_of, time_rounds
    from compress.runtimes import load

    by_role = {m["role"]: m for m in report["models"]}
    if "final" not in by_role or "teacher" not in by_role:
        raise CompressError("the report needs a 'final' and a 'teacher' model to check")
    final, teacher = by_role["final"], by_role["teacher"]
    paths = {"final": _resolve(final["path"], report_dir), "teacher": _resolve(teacher["path"], report_dir)}
    runners = {k: load(p, threads=threads) for k, p in paths.items()}
    x = _batch_of(np.zeros((1, *runners["teacher"].input_shape), np.float32), batch)
    samples = time_rounds({k: r.timer(x) for k, r in runners.items()}, rounds=rounds, calls=calls, seed=seed)
    ratio = latency_ratio(samples["final"], samples["teacher"], seed=seed)
    ratio.update(batch=batch, threads=threads, calls=calls)
    return {"name": report.get("name"), "accuracy": final["accuracy"], "size_bytes": final["size_bytes"],
            "latency_ratio": ratio, "cpu": report.get("cpu")}


def measure_files(final: str | Path, teacher: str | Path, **kw) -> dict:
    """``measure`` for two model files without a report (accuracy and size: size only)."""
    report = {"models": [{"role": "final", "path": str(final), "accuracy": float("nan"),
                          "size_bytes": Path(final).stat().st_size},
                         {"role": "teacher", "path": str(teacher)}]}
    return measure(report, Path(final).parent, **kw)


def baseline_from(current: dict | list[dict], tol: Tolerances) -> dict:
    """What ``--update-baseline`` writes: the measured values and the tolerances they are held to.

    ``current`` may be several independent measurements (fresh sessions each): their geometric mean is
    the baseline ratio and the standard deviation of their log ratios is ``run_sd_log``.
    """
    runs = current if isinstance(current, list) else [current]
    first = runs[0]
    lat = {k: v for k, v in first["latency_ratio"].items() if k != "per_round"}
    if len(runs) > 1:
        logs = np.log([r["latency_ratio"]["ratio"] for r in runs])
        sd = float(logs.std(ddof=1))
        se = sd / np.sqrt(len(logs))
        lat.update(ratio=float(np.exp(logs.mean())), ci95=[float(np.exp(logs.mean() - 1.96 * se)),
                                                            float(np.exp(logs.mean() + 1.96 * se))],
                   repeats=len(runs), run_sd_log=sd, ratios=[round(float(np.exp(v)), 5) for v in logs])
    return {"schema_version": SCHEMA_VERSION, "name": first.get("name"),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": first.get("cpu"),
            "accuracy": first["accuracy"], "size_bytes": first["size_bytes"], "latency_ratio": lat,
            "tolerance": {"accuracy": tol.accuracy, "size": tol.size, "latency": tol.latency}}


def compare(current: dict, baseline: dict, tol: Tolerances) -> CheckResult:
    """One verdict per metric; only a change beyond its tolerance (and, for latency, beyond the noise) fails."""
    res = CheckResult()
    acc_b, acc_c = baseline.get("accuracy"), current.get("accuracy")
    if acc_b is not None and acc_c is not None and not np.isnan(acc_c):
        drop = acc_b - acc_c
        res.verdicts.append(Verdict("accuracy", acc_b, acc_c, f">= {acc_b - tol.accuracy:.4f}",
                                    "regressed" if drop > tol.accuracy + 1e-12 else "ok",
                                    f"{-drop * 100:+.2f} points (tolerance {tol.accuracy * 100:.2f})"))
    size_b, size_c = baseline.get("size_bytes"), current.get("size_bytes")
    if size_b and size_c:
        growth = size_c / size_b - 1
        res.verdicts.append(Verdict("size_bytes", size_b, size_c, f"<= {size_b * (1 + tol.size):,.0f}",
                                    "regressed" if growth > tol.size else "ok",
                                    f"{growth * 100:+.1f} % (tolerance {tol.size * 100:.0f} %)"))
    lat_b, lat_c = baseline.get("latency_ratio"), current.get("latency_ratio")
    if lat_b and lat_c:
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
    """95 % interval of current ratio / baseline ratio: log-scale; the run's and the baseline's standard
    errors and the baseline's run-to-run standard deviation, in quadrature."""
    half = 1.96 * float(np.sqrt(_log_se(current) ** 2 + _log_se(baseline) ** 2 + baseline.get("run_sd_log", 0.0) ** 2))
    log_rel = float(np.log(current["ratio"]) - np.log(baseline["ratio"]))
    return float(np.exp(log_rel - half)), float(np.exp(log_rel + half))


def summary_markdown(res: CheckResult, name: str | None = None) -> str:
    head = f"### compress check{': ' + name if name else ''}: {'REGRESSED' if res.failed else 'passed'}"
    lines = [head, "", "| metric | baseline | current | limit | verdict | detail |", "|---|---|---|---|---|---|"]
    for v in res.verdicts:
        fmt = (lambda a: f"{a:.4f}") if isinstance(v.baseline, float) else (lambda a: f"{a:,}")
        lines.append(f"| {v.metric} | {fmt(v.baseline)} | {fmt(v.current)} | {v.limit} | {v.status} | {v.detail} |")
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
