"""The command line. Heavy imports (torch, onnxruntime) happen inside commands so ``--help`` is instant.

Exit codes: 0 success, 1 a failure while running, 2 a bad recipe or bad arguments (before any compute),
3 ``compress check`` found a regression.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

__all__ = ["main", "cli"]


class _DefaultRun(click.Group):
    """``compress RECIPE.yaml`` means ``compress run RECIPE.yaml``. Every command fails the same way: a CompressError
    is one red line and its exit code (no traceback), Ctrl-C is "interrupted" and exit code 130."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)

    def invoke(self, ctx):
        from compress.errors import CompressError

        try:
            return super().invoke(ctx)
        except CompressError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.secho("interrupted", fg="red", err=True)
            sys.exit(130)


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
    compress bench model.onnx model.pte     time model files with one protocol
    compress check RUN --baseline b.json    the CI gate: exit 3 on a regression
    compress search recipes/digits.yaml     the Pareto frontier over ratio x quantization x width
    """


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--output", "-o", type=click.Path(), default=None, help="Output root (default: exported/).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or table; the report files are still written.")
@click.option("--force", is_flag=True, help="Recompute everything instead of reusing cached models and measurements.")
@click.option("--nproc", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Train data-parallel in this many processes (torchrun, gloo); only rank 0 writes files.")
def run(recipe: str, output: str | None, quiet: bool, force: bool, nproc: int) -> None:
    """Run RECIPE: every stage, then the report (<output>/<name>/report.{json,md,png}).

    Trained models, stage outputs and measurements are cached under <output>/.cache: a rerun
    redoes only what changed, and a run that was killed resumes after its last finished stage.
    """
    from compress import pipeline

    loaded = _load(recipe)
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        # Re-launch under torchrun; the recipe is validated first so a typo fails once, not per rank.
        pipeline.output_dir(loaded, output)
        pipeline.prepare(loaded)
        args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "compress", "run", recipe] + (["--output", output] if output else []) \
            + (["--quiet"] if quiet else []) + (["--force"] if force else [])
        sys.exit(subprocess.call(args))
    pipeline.run(loaded, output=output, quiet=quiet, force=force)


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--output", "-o", type=click.Path(), default=None, help="Output root to check (default: exported/).")
def validate(recipe: str, output: str | None) -> None:
    """Check RECIPE without training: keys, values, stage order, files, data, model shapes, weights."""
    from compress import pipeline

    for line in pipeline.validate(_load(recipe), output):
        click.echo(line)
    click.secho(f"{Path(recipe)}: valid", fg="green")


RUNTIME_NAMES = ("ort", "ort-mobile", "executorch", "litert")  # the registry's names, listed here so --help imports nothing


def _bench_data(spec: str):
    """(x, y) from a recipe's test split or an .npz with arrays x and y."""
    import numpy as np

    from compress.data import load_data, read_arrays

    if spec.endswith((".yaml", ".yml")):
        recipe = _load(spec)
        test = load_data(recipe.data, recipe.seed).test
        return test.x, test.y
    arrays = read_arrays(Path(spec), ("x",), optional=("y",))  # headers validated before anything is read
    return np.asarray(arrays["x"], np.float32), np.asarray(arrays["y"]) if "y" in arrays else None


@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--runtime", type=click.Choice(RUNTIME_NAMES), default=None,
              help="Runtime for every file (default: by suffix: .onnx ort, .ort ort-mobile, .pte executorch, .tflite litert).")
@click.option("--threads", type=click.IntRange(min=0), default=1, show_default=True, help="Threads per model (0 = all cores).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Rows per timed call.")
@click.option("--data", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A recipe (its test split) or an .npz with x and y: inputs for timing and accuracy.")
@click.option("--rounds", type=click.IntRange(min=3), default=30, show_default=True, help="Interleaved rounds.")
@click.option("--calls", type=click.IntRange(min=1), default=20, show_default=True, help="Timed calls per model per round.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
def bench(models, runtime, threads, batch, data, rounds, calls, as_json) -> None:
    """Time MODEL files with the project's protocol: warm-up, interleaved rounds, p50/p90/p99, memory, size.

    \b
    compress bench exported/digits/model.onnx exported/digits/teacher.onnx
    compress bench exported/digits/model.pte --data recipes/digits.yaml --batch 64 --threads 0 --json
    """
    import json

    from compress.bench import bench_files, cpu_info

    x, y = _bench_data(data) if data else (None, None)
    names, files = set(), []
    for path in models:
        name = Path(path).name if Path(path).name not in names else path
        names.add(name)
        files.append((name, path, runtime))
    rows = bench_files(files, threads=threads, batch=batch, x=x, y=y, rounds=rounds, calls=calls)
    if as_json:
        click.echo(json.dumps({"cpu": cpu_info(), "rounds": rounds, "calls": calls, "models": rows}, indent=2))
        return
    from compress.report import console, rich_table

    cols = ["model", "runtime", "size", "p50 (us)", "p90 (us)", "p99 (us)", "peak RSS +", "static batch"]
    cells = []
    for r in rows:
        lat, mem = r["latency_ms"], r["peak_rss_growth_bytes"]
        cells.append([r["name"], r["runtime"], f"{r['size_bytes'] / 1e3:,.1f} kB",
                      *(f"{lat[p] * 1e3:.1f}" for p in ("p50", "p90", "p99")),
                      "-" if mem is None else f"{mem / 2**20:.1f} MiB", str(r["static_batch"] or "any")]
                     + ([f"{r['accuracy']:.2%}"] if y is not None else []))
    title = f"compress bench: batch {batch}, {threads or 'all'} thread(s), {rounds} rounds x {calls} calls, interleaved"
    cols += ["accuracy"] if y is not None else []
    console(160).print(rich_table(title, cols, cells, left=("model", "runtime")))  # piped or logged: 160 columns


class _Tolerance(click.ParamType):
    """A tolerance: a finite number >= 0 (NaN or inf would make every comparison pass)."""

    name = "TOL"

    def convert(self, value, param, ctx):
        import math

        v = click.FLOAT.convert(value, param, ctx)  # not a number: click's own message
        if not math.isfinite(v) or v < 0:
            self.fail(f"{value!r}: a tolerance is a finite number >= 0", param, ctx)
        return v


@cli.command()
@click.argument("run", type=click.Path(exists=True))
@click.option("--baseline", "-b", type=click.Path(dir_okay=False), required=True, help="The committed baseline JSON.")
@click.option("--update-baseline", is_flag=True, help="Write the measured values to --baseline instead of comparing.")
@click.option("--summary", type=click.Path(dir_okay=False), default=None,
              help="Write a markdown table here (also appended to $GITHUB_STEP_SUMMARY when set).")
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None,
              help="Output root when RUN is a recipe; the check's run goes to <output>/<name>.check/.")
@click.option("--accuracy-tol", "--metric-tol", "metric_tol", type=_Tolerance(), default=None,
              help="Quality metric worsening allowed, in its units (accuracy: 0.01 = one point) [baseline's, else 0.01].")
@click.option("--size-tol", type=_Tolerance(), default=None, help="Relative size growth allowed [baseline's, else 0.05].")
@click.option("--latency-tol", type=_Tolerance(), default=None,
              help="Relative growth of the final/teacher latency ratio allowed [baseline's, else 0.10].")
@click.option("--rounds", type=click.IntRange(min=5), default=30, show_default=True, help="Interleaved timing rounds.")
@click.option("--calls", type=click.IntRange(min=1), default=20, show_default=True, help="Calls per model per round.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Rows per timed call.")
@click.option("--threads", type=click.IntRange(min=0), default=1, show_default=True, help="Threads (0 = all cores).")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="--update-baseline: independent latency measurements (fresh sessions) for the run-to-run spread.")
def check(run, baseline, update_baseline, summary, output, metric_tol, size_tol, latency_tol, rounds, calls, batch,
          threads, repeats) -> None:
    """The CI gate: compare RUN (a recipe, which is run first into <output>/<name>.check/, a report.json or its
    folder) with a baseline.

    Believes only what it measures: the model files must have the sha256 their report recorded, size comes
    from the file, accuracy is measured again on the test split from the final file when the recipe and data
    in the report load (else the verdict says it was taken from report.json), and the final model's latency
    relative to the teacher's is timed here, interleaved. Fails (exit 3) when accuracy dropped, the file grew,
    or the latency ratio grew beyond its tolerance and outside the noise (docs/ci-gate.md).
    Exit 0: passed; 1: could not check; 2: bad input (a bad baseline, a file changed since its report).
    """
    from compress import check as gate
    from compress.pipeline import task_named
    from compress.schema import read_baseline

    stored = None if update_baseline else read_baseline(baseline)  # a bad baseline fails before any compute
    loaded = gate.load_run(run, output=output)
    # The metric once: --update-baseline times the latency several times.
    accuracy = task_named(loaded.schema.task).remeasure(loaded.report, gate.verify_files(loaded)["final"])
    runs = [gate.measure(loaded, rounds=rounds, calls=calls, batch=batch, threads=threads, seed=i, accuracy=accuracy)
            for i in range(repeats if update_baseline else 1)]
    current = runs[0]
    tol = gate.tolerances(stored, metric_tol, size_tol, latency_tol)
    if update_baseline:
        from compress._io import write_json

        stored = gate.baseline_from(runs, tol)
        write_json(baseline, stored)
        lat, m = stored["latency_ratio"], stored["metric"]
        click.echo(f"baseline written to {baseline}: {m['name']} {m['value']:.4f} ({current['metric_source']}), "
                   f"{current['size_bytes']:,} bytes, final/teacher latency {lat['ratio']:.3f} (95 % CI "
                   f"{lat['ci95'][0]:.3f}-{lat['ci95'][1]:.3f}, {len(runs)} run(s), run-to-run sd "
                   f"{lat.get('run_sd_log', 0.0):.3f} on the log scale)")
        return
    result = gate.compare(current, stored, tol)
    notes = [f"run: {loaded.folder}", f"model files verified against the sha256 recorded in {loaded.folder / 'report.json'}"]
    click.echo(f"checked {loaded.folder}: model files match the sha256 in its report.json")
    gate.write_summary(gate.summary_markdown(result, loaded.report.get("name"), notes), summary)
    for v in result.verdicts:
        color = {"ok": "green", "noisy": "yellow", "regressed": "red"}[v.status]
        click.secho(f"{v.status:>9}  {v.metric}: {v.detail}", fg=color)
    if result.failed:
        click.secho("check: REGRESSED", fg="red", err=True)
        sys.exit(gate.EXIT_REGRESSED)
    click.secho("check: passed", fg="green")


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--output", "-o", type=click.Path(), default=None, help="Output root (default: the recipe's, else exported/).")
@click.option("--ratios", multiple=True, metavar="R,R,...",
              help="Pruning ratios (0 = no prune stage) [0.2,0.3,0.5 and the recipe's].")
@click.option("--modes", multiple=True, metavar="M,M,...",
              help="Quantization modes (fp32 = no quantize stage) [fp32,int8_static,int8_dynamic,int4_weight_only].")
@click.option("--widths", multiple=True, metavar="W,W,...", help="Student widths [the recipe's].")
@click.option("--method", type=click.Choice(["grid", "tpe"]), default="grid", show_default=True,
              help="grid: every combination; tpe: optuna's Bayesian sampler (pip install 'compress[search]').")
@click.option("--trials", type=click.IntRange(min=1), default=None, help="--method tpe: variants to try [20].")
@click.option("--budget", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Wall time: variants whose estimated build + measurement would not fit are not started "
                   "(with --storage: this worker's building).")
@click.option("--quiet", "-q", is_flag=True, help="No progress or table; the search files are still written.")
@click.option("--storage", metavar="URL", default=None,
              help="An optuna storage: this process is one worker of a study any number of workers share "
                   "(sqlite:///search.db: one machine; journal:///shared/search.log: a shared filesystem; "
                   "postgresql://user@host/db: a cluster). pip install 'compress[search]'.")
@click.option("--study", metavar="NAME", default=None, help="With --storage: the study's name [the recipe's name].")
@click.option("--report", is_flag=True,
              help="With --storage: build nothing; measure the study's candidates, the teacher and the scratch "
                   "student together on this machine and write the frontier (after the workers finish).")
@click.option("--heartbeat", type=click.IntRange(min=1), default=None, metavar="SECONDS",
              help="With --storage: seconds between a worker's heartbeats; the variant of a worker that missed "
                   "two is queued again [60].")
def search(recipe, output, ratios, modes, widths, method, trials, budget, quiet, storage, study, report,
           heartbeat) -> None:
    """Variants of RECIPE over pruning ratio x quantization mode x student width; the Pareto frontier.

    Variants share the cache (<output>/.cache) with each other and with `compress run`: the teacher, the
    scratch student and every stage before the first changed one are built once. All candidates, the
    teacher and the scratch student are measured at the end in one interleaved session. Writes
    <output>/<name>/search/search.{json,md,png}.

    With --storage, run the same command in as many processes (and machines sharing the output folder)
    as you like: each builds variants the study has not built yet (each variant once; --budget is per
    worker). Then the same command with --report measures them together and writes the frontier.

    \b
    compress search recipes/digits.yaml --ratios 0.2,0.3,0.5 --modes int8_static,int8_dynamic
    compress search recipes/digits.yaml --method tpe --trials 12 --budget 600
    compress search recipes/digits.yaml --storage sqlite:///search.db      # in each worker
    compress search recipes/digits.yaml --storage sqlite:///search.db --report
    """
    from compress.search import search as run_search

    run_search(_load(recipe), output, ratios=ratios or None, modes=modes or None, widths=widths or None,
               method=method, budget=budget, trials=trials, quiet=quiet, storage=storage, study=study,
               report=report, heartbeat=heartbeat)


def main() -> None:
    cli(prog_name="compress")


if __name__ == "__main__":
    main()
