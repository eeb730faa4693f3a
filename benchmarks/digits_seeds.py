"""The default recipe over several seeds: is the chain worth it, and does it meet its targets?

    python benchmarks/digits_seeds.py [--recipe recipes/digits.yaml] [--seeds 0 1 2] [--output exported/bench]

Each seed changes the data split, every initialisation and the batch order. Prints one table of
mean ± std over seeds (test errors, accuracy, size, batch-1/1-thread and large-batch latency ratios
to the teacher), then the targets of issue 3 with the measured value beside each.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import yaml


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(Path(__file__).parents[1] / "recipes" / "digits.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--output", default="exported/bench")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from compress.recipe import parse_recipe
    from compress.pipeline import run

    raw = yaml.safe_load(Path(args.recipe).read_text())
    runs = []
    for seed in args.seeds:
        recipe = parse_recipe({**raw, "seed": seed, "name": f"{raw['name']}-seed{seed}"})
        runs.append(run(recipe, output=args.output, quiet=True))
        print(f"seed {seed}: done in {runs[-1]['run_seconds']:.0f} s", flush=True)

    # rows: one per model role/stage name, aggregated over seeds
    names = [m["name"] for m in runs[0]["models"]]
    table = Table(title=f"{raw['name']}: {len(runs)} seeds, test split (mean ± std)")
    for col in ("model", "test errors", "accuracy %", "size kB", "smaller than teacher", "b1 p50 us",
                "b1 speed-up", "b64 p50 us", "b64 speed-up"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name in names:
        ms = [next(m for m in r["models"] if m["name"] == name) for r in runs]
        ts = [next(m for m in r["models"] if m["role"] == "teacher") for r in runs]
        table.add_row(name, _ms([m["errors"] for m in ms]), _ms([100 * m["accuracy"] for m in ms]),
                      _ms([m["size_bytes"] / 1e3 for m in ms]),
                      _ms([t["size_bytes"] / m["size_bytes"] for m, t in zip(ms, ts)]),
                      _ms([1e3 * m["latency_ms"]["p50"] for m in ms]),
                      _ms([t["latency_ms"]["p50"] / m["latency_ms"]["p50"] for m, t in zip(ms, ts)]),
                      _ms([1e3 * m["latency_batch_ms"]["p50"] for m in ms]),
                      _ms([t["latency_batch_ms"]["p50"] / m["latency_batch_ms"]["p50"] for m, t in zip(ms, ts)]))
    console = Console()
    console.print(table)

    def role(r, which):
        return next(m for m in r["models"] if m["role"] == which)

    def first_stage(r, stage):
        return next((m for m in r["models"] if m["name"].endswith("_" + stage)), None)

    fs = [r["summary"]["final_vs_teacher"] for r in runs]
    scratch_err = [role(r, "scratch")["errors"] for r in runs]
    distill_err = [first_stage(r, "distill")["errors"] for r in runs if first_stage(r, "distill")]
    final_err = [role(r, "final")["errors"] for r in runs]
    acc_ratio = statistics.mean(f["accuracy_ratio"] for f in fs)
    targets = Table(title="targets (issue 3)")
    for col in ("target", "measured", "met"):
        targets.add_column(col)
    rows = [
        ("first run < 180 s (seed 0, cold cache)", f"{runs[0]['run_seconds']:.0f} s", runs[0]["run_seconds"] < 180),
        ("final file >= 16x smaller than teacher ONNX", _ms([f["size_ratio"] for f in fs]), min(f["size_ratio"] for f in fs) >= 16),
        ("final p50 batch 1, 1 thread >= 2.5x faster", _ms([f["speedup_p50_batch1"] for f in fs]),
         statistics.mean(f["speedup_p50_batch1"] for f in fs) >= 2.5),
        ("final p50 batch 64 >= 5x faster", _ms([f["speedup_p50_batch"] for f in fs]),
         statistics.mean(f["speedup_p50_batch"] for f in fs) >= 5),
        ("final accuracy >= 99% of teacher's (mean)", f"{100 * acc_ratio:.2f}%", acc_ratio >= 0.99),
        ("distilled student: fewer test errors than scratch", f"{_ms(distill_err)} vs {_ms(scratch_err)}",
         statistics.mean(distill_err) < statistics.mean(scratch_err)),
        ("final model vs scratch (test errors)", f"{_ms(final_err)} vs {_ms(scratch_err)}",
         statistics.mean(final_err) <= statistics.mean(scratch_err)),
    ]
    for name, value, ok in rows:
        targets.add_row(name, value, "[green]yes[/green]" if ok else "[red]no[/red]")
    console.print(targets)


if __name__ == "__main__":
    main()
