"""``compress search``: variants of one recipe over pruning ratio x quantization mode x student width.

Every variant is the recipe with those three values changed, built by ``pipeline.build`` against the
shared cache, so variants share the teacher, the scratch baseline and every stage before the first one
that differs (a second ratio re-runs prune and what follows it, never distill). Nothing is timed per
variant: the final model of every candidate, the teacher and the scratch student are measured together
at the end, in one interleaved session (``pipeline.measure``), on the test split that no stage trained
or calibrated on. The Pareto frontier is taken over (test accuracy up, p50 latency at batch 1 down,
file size down).

Ratio 0 means "no prune stage"; mode ``fp32`` means "no quantize stage" (the exported fp32 file).
"""

from __future__ import annotations

import math
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from compress._io import write_json, write_text
from compress._progress import say
from compress.errors import CompressError, MissingExtraError

__all__ = ["Axes", "Point", "SearchError", "parse_axes", "quantize_modes", "variant", "pareto", "search",
           "markdown", "plot", "print_table"]

FP32 = "fp32"
METHODS = ("grid", "tpe")


class SearchError(CompressError):
    """Bad search arguments (an unknown mode, a ratio out of range): found before any compute."""

    exit_code = 2


def quantize_modes() -> list[str]:
    """``fp32`` plus every mode the quantize stage accepts (read off its config, so new modes join)."""
    from compress.stages.quantize import QuantizeConfig

    return [FP32, *typing.get_args(QuantizeConfig.model_fields["mode"].annotation)]


@dataclass(frozen=True)
class Point:
    """One variant: the three values a search changes. ``width`` is None for a factory-built student."""

    ratio: float
    mode: str
    width: int | None

    @property
    def name(self) -> str:
        return f"r{self.ratio:g}-{self.mode}" + (f"-w{self.width}" if self.width is not None else "")

    def as_dict(self) -> dict:
        return {"ratio": self.ratio, "mode": self.mode, "width": self.width}


@dataclass(frozen=True)
class Axes:
    ratios: tuple[float, ...]
    modes: tuple[str, ...]
    widths: tuple[int | None, ...]

    def grid(self) -> list[Point]:
        return [Point(r, m, w) for w in self.widths for r in self.ratios for m in self.modes]


def _split(values) -> list[str]:
    """``("0.2,0.3", "0.5")`` -> ``["0.2", "0.3", "0.5"]``: repeated flags and comma lists both work."""
    out = []
    for v in values or ():
        out += [p.strip() for p in str(v).split(",") if p.strip()]
    return out


def parse_axes(recipe, ratios=None, modes=None, widths=None) -> Axes:
    """The search axes from the command line's strings (None: the defaults), checked against the recipe.

    Defaults: ratios 0.2, 0.3, 0.5 and the recipe's own; every quantization mode and fp32; the recipe's width.
    """
    own = own_point(recipe)
    valid_modes = quantize_modes()
    got_ratios = []
    for v in _split(ratios) if ratios else ["0.2", "0.3", "0.5", f"{own.ratio:g}"]:
        try:
            r = float(v)
        except ValueError:
            raise SearchError(f"--ratios: {v!r} is not a number; give fractions of channels removed, e.g. 0.2,0.3,0.5 "
                              "(0 = no prune stage)") from None
        if not (0 <= r < 1) or math.isnan(r):
            raise SearchError(f"--ratios: {v} is out of range; a ratio is in [0, 1) (0 = no prune stage)")
        got_ratios.append(round(r, 4))
    got_modes = _split(modes) if modes else [m for m in valid_modes if m in (FP32, "int8_static", "int8_dynamic",
                                                                               "int4_weight_only")]
    for m in got_modes:
        if m not in valid_modes:
            import difflib

            close = difflib.get_close_matches(m, valid_modes, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise SearchError(f"--modes: unknown mode {m!r}; {hint}valid choices: {', '.join(valid_modes)}")
    got_widths: list[int | None] = []
    for v in _split(widths) if widths else [own.width]:
        if v is None:
            got_widths.append(None)
            continue
        try:
            w = int(v)
        except ValueError:
            raise SearchError(f"--widths: {v!r} is not a whole number of channels (cnn) or units (mlp)") from None
        if not 1 <= w <= 4096:
            raise SearchError(f"--widths: {w} is out of range; a student width is 1 to 4096")
        got_widths.append(w)
    axes = Axes(tuple(dict.fromkeys(sorted(got_ratios))), tuple(dict.fromkeys(got_modes)),
                tuple(dict.fromkeys(got_widths)))
    _check_recipe_allows(recipe, axes)
    return axes


def own_point(recipe) -> Point:
    """The recipe's own values: its first prune ratio (0 without one), its last quantize mode (fp32 without
    one), its student's width (None for a factory student)."""
    prunes = [st for st in recipe.stages if st.type == "prune"]
    quants = [st for st in recipe.stages if st.type == "quantize"]
    spec = recipe.student.model
    return Point(prunes[0].ratio if prunes else 0.0, quants[-1].mode if quants else FP32,
                 spec.width if spec.arch is not None else None)


def _check_recipe_allows(recipe, axes: Axes) -> None:
    """Each axis needs something in the recipe to change; say what to add, at the recipe key."""
    from compress.stages.base import STAGES

    own = own_point(recipe)
    types = [st.type for st in recipe.stages]
    if "prune" not in types and any(r > 0 for r in axes.ratios):
        raise recipe.error_at("--ratios: the recipe has no prune stage to set a ratio on; add one, e.g. "
                              "{type: prune, ratio: 0.3}, or search --ratios 0 only", "stages")
    if "quantize" not in types and any(m != FP32 for m in axes.modes):
        if STAGES[recipe.stages[-1].type].produces != "onnx":
            raise recipe.error_at("--modes: the recipe has no quantize stage and its chain ends in a torch model; "
                                  "add {type: export} so that a quantize stage can follow, or search --modes fp32 only",
                                  "stages")
    if any(w != own.width for w in axes.widths):
        if own.width is None:
            raise recipe.error_at("--widths: the student is built by a factory; a search can change the width of a "
                                  "built-in student only (student.model.arch: cnn or mlp)", "student", "model")
        if recipe.student.from_teacher is not None:
            raise recipe.error_at("--widths: the student is derived from the teacher (from_teacher); give it "
                                  "student.model instead to search over its width", "student", "from_teacher")


def variant(recipe, p: Point, name: str | None = None):
    """The recipe with ``p``'s ratio, mode and width, re-validated (a bad combination fails here, at no cost).

    Ratio 0 drops every prune stage; ``fp32`` drops every quantize stage; a quantize stage is appended
    after the last stage when the recipe has none.
    """
    from compress.recipe import parse_recipe

    data = recipe.model_dump(mode="json", by_alias=True, exclude={"source_file"})
    stages = []
    for st in data["stages"]:
        if st["type"] == "prune":
            if p.ratio == 0:
                continue
            st = {**st, "ratio": p.ratio}
        elif st["type"] == "quantize":
            if p.mode == FP32:
                continue
            st = {**st, "mode": p.mode}
        stages.append(st)
    if p.mode != FP32 and not any(st["type"] == "quantize" for st in stages):
        stages.append({"type": "quantize", "mode": p.mode})
    data["stages"] = stages
    student = dict(data["student"])
    if student.get("from_teacher") is not None:
        student.pop("model")  # derived again, identically, by the recipe's validator
    elif p.width is not None:
        student["model"] = {**student["model"], "width": p.width}
    data["student"] = student
    if name is not None:
        data["name"] = name
    out = parse_recipe(data, recipe.source_file, dict(recipe._lines))
    out._lines = dict(recipe._lines)
    return out


# --- the frontier ----------------------------------------------------------------------------------


def _objectives(m: dict) -> tuple[float, float, float]:
    return m["accuracy"], m["latency_ms"]["p50"], m["size_bytes"]


def dominates(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """``a`` is at least as accurate, as fast and as small as ``b``, and strictly better in one of them."""
    return a[0] >= b[0] and a[1] <= b[1] and a[2] <= b[2] and (a[0] > b[0] or a[1] < b[1] or a[2] < b[2])


def pareto(points: list[tuple[float, float, float]]) -> list[bool]:
    """For each (accuracy, latency, size): True when no other point dominates it."""
    return [not any(dominates(q, p) for j, q in enumerate(points) if j != i) for i, p in enumerate(points)]


# --- running ---------------------------------------------------------------------------------------


@dataclass
class _Candidate:
    point: Point
    name: str
    recipe: object
    keys: list[str]
    is_recipe: bool = False
    entry: dict | None = None  # the final model, as pipeline.build measured it
    stages: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    probe: dict = field(default_factory=dict)


def _optuna():
    try:
        import optuna
    except ImportError:
        raise MissingExtraError("compress search --method tpe", "search", "optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _probe(path, splits, bench) -> dict:
    """Validation accuracy and a rough latency of one file: what TPE optimizes and what the budget
    reserves for the final session. Never reported as the candidate's latency (that comes from the one
    interleaved session at the end)."""
    from compress.runtimes.onnxruntime import predict, session

    t0 = time.perf_counter()
    s = session(path, threads=1)
    val_acc = float((predict(s, splits.val.x).argmax(1) == splits.val.y).mean())
    x1 = np.ascontiguousarray(splits.test.x[:1])
    name = s.get_inputs()[0].name
    for _ in range(3):
        s.run(None, {name: x1})
    t = []
    for _ in range(7):
        a = time.perf_counter()
        s.run(None, {name: x1})
        t.append(time.perf_counter() - a)
    setup = time.perf_counter() - t0 - sum(t)
    reps = -(-bench.batch // len(splits.test.x))
    xb = np.ascontiguousarray(np.concatenate([splits.test.x] * reps)[:bench.batch])
    sb = session(path, threads=bench.threads)
    sb.run(None, {name: xb})
    a = time.perf_counter()
    sb.run(None, {name: xb})
    tb = time.perf_counter() - a
    return {"val_accuracy": val_acc, "latency_ms": float(np.median(t)) * 1e3, "batch_ms": tb * 1e3,
            "setup_s": setup}


def _session_estimate(probes: list[dict], bench) -> float:
    """Seconds the final interleaved session will take for models with these probes (evaluate's protocol:
    10 warm-up calls + rounds x calls at batch 1, 3 + rounds x calls/4 at the large batch, 3 sessions each)."""
    total = 0.0
    for p in probes:
        total += 3 * p["setup_s"] + (10 + bench.rounds * bench.calls) * p["latency_ms"] / 1e3
        total += (3 + bench.rounds * max(1, bench.calls // 4)) * p["batch_ms"] / 1e3
    return total


def search(recipe, output=None, *, ratios=None, modes=None, widths=None, method: str = "grid",
           budget: float | None = None, trials: int | None = None, quiet: bool = False,
           clock: Callable[[], float] = time.monotonic) -> dict:
    """Build every variant (grid) or ``trials`` of them (TPE), measure all together, write the frontier.

    Returns the ``search.json`` content. ``budget`` (seconds of wall time, the final measurement
    included) stops launching variants that would not fit, estimated from the times of the stages each
    would have to compute (cached stages cost nothing) and from the measurement session it would add to.
    """
    from compress import pipeline
    from compress._io import inside, publish, staging
    from compress.bench import cpu_info

    started = clock()
    if method not in METHODS:
        raise SearchError(f"--method: unknown method {method!r}; valid choices: {', '.join(METHODS)}")
    if budget is not None and not budget > 0:
        raise SearchError(f"--budget: {budget} seconds; give a positive number of seconds")
    if trials is not None and method != "tpe":
        raise SearchError("--trials applies to --method tpe only; a grid runs every point")
    axes = parse_axes(recipe, ratios, modes, widths)
    optuna = _optuna() if method == "tpe" else None  # a missing extra fails before any compute
    out_dir = pipeline.output_dir(recipe, output)
    search_dir, cache = inside(out_dir, "search"), pipeline.output_cache(out_dir)

    # Everything that can fail without compute fails here: every grid variant is built and checked,
    # and the data and models are prepared once per student width.
    preps: dict = {}

    def prep_for(r):
        w = own_point(r).width
        if w not in preps:
            preps[w] = pipeline.prepare(r)
        return preps[w]

    own = own_point(recipe)
    base = _Candidate(own, own.name, recipe, pipeline.chain_keys(recipe, prep_for(recipe)), is_recipe=True)
    if pipeline.chain_keys(variant(recipe, own), preps[own.width]) != base.keys:
        base.name = "recipe"  # e.g. two prune stages with different ratios: no grid point is the recipe
    planned = [base]

    known: dict[tuple, _Candidate] = {tuple(base.keys): base}  # same stage keys = the same model

    def candidate(p: Point) -> _Candidate:
        r = variant(recipe, p, name=f"{recipe.name}.{p.name}")
        r = r.model_copy(update={"baseline": "none"})  # the scratch baseline comes from the recipe's own build
        r._lines = dict(recipe._lines)
        c = _Candidate(p, p.name, r, pipeline.chain_keys(r, prep_for(r)))
        return known.get(tuple(c.keys), c)

    if method == "grid":
        for p in axes.grid():
            c = candidate(p)
            if tuple(c.keys) not in known:
                known[tuple(c.keys)] = c
                planned.append(c)
        n_planned = len(planned)
    else:
        n_planned = trials or 20
        for w in axes.widths:  # every width is checked before any compute, as the grid's are
            candidate(Point(axes.ratios[0], axes.modes[0], w))

    with pipeline.exclusive(search_dir):
        say(f"[bold]compress search[/bold] {recipe.name}: {method}, {n_planned} variant(s) planned over "
            f"ratios {', '.join(f'{r:g}' for r in axes.ratios)} x modes {', '.join(axes.modes)}"
            + (f" x widths {', '.join(str(w) for w in axes.widths)}" if len(axes.widths) > 1 else "")
            + (f", budget {budget:g} s" if budget else ""), quiet)
        done: list[_Candidate] = []
        refs: list[dict] = []
        stage_seconds: dict[tuple[int, str], float] = {}  # (index, type) -> the longest fresh computation seen
        skipped: list[dict] = []

        def estimate(c: _Candidate) -> float | None:
            """Seconds to build ``c`` and to measure it in the final session; None when nothing is known yet."""
            from compress.cache import StageCache

            total = 0.0
            for i, (st, key) in enumerate(zip(c.recipe.stages, c.keys)):
                if cache.has(StageCache.KIND, key):
                    continue
                if (i, st.type) in stage_seconds:
                    total += stage_seconds[(i, st.type)]
                elif any(t == st.type for _, t in stage_seconds):
                    total += max(s for (_, t), s in stage_seconds.items() if t == st.type)
                elif stage_seconds:
                    total += max(stage_seconds.values())  # a stage type not computed yet: the slowest seen
                else:
                    return None  # nothing computed yet (a warm cache): launch it and learn
            probes = [d.probe for d in done if d.probe] + [r["probe"] for r in refs]
            worst = max(probes, key=lambda p: p["latency_ms"] + p["batch_ms"]) if probes else None
            return total + _session_estimate(probes + ([worst] if worst else []), bench=recipe.bench)

        def run_one(c: _Candidate, index: int) -> None:
            say(f"[bold magenta]variant {index}[/bold magenta] {c.name}" + (" (the recipe's own)" if c.is_recipe else ""),
                quiet)
            t0 = clock()
            # Built in a staging folder and published whole: an earlier search's files for this variant are
            # replaced only by a complete new set.
            vdir = inside(search_dir, "variants", c.name)
            with staging(vdir) as sdir:
                built = pipeline.build(c.recipe, prep_for(c.recipe), sdir, cache, quiet=quiet)
                publish(sdir, vdir, pipeline.OWNED)
                built = pipeline.relocate(built, sdir, vdir)
            c.seconds = clock() - t0
            c.stages = [{"type": s["type"], "cached": s["cached"], "seconds": s["seconds"]} for s in built.stage_log]
            for i, (s, key) in enumerate(zip(built.stage_log, c.keys)):
                # How long each stage took to compute, kept beside the cache: a later search whose stages
                # are cached still knows what computing one more variant costs.
                if not s["cached"]:
                    cache.put_json("search-seconds", key, {"type": s["type"], "seconds": s["seconds"]})
                took = s["seconds"] if not s["cached"] else (cache.get_json("search-seconds", key) or {}).get("seconds")
                took = took if isinstance(took, (int, float)) else None
                if took is not None:
                    stage_seconds[(i, s["type"])] = max(stage_seconds.get((i, s["type"]), 0.0), took)
            final = built.measured[-1]
            c.entry = {**final, "name": c.name, "role": "candidate"}
            c.probe = _probe(final["path"], prep_for(c.recipe).splits, recipe.bench)
            if not refs:
                for m in built.measured:
                    if m["role"] in ("teacher", "scratch"):
                        refs.append({**m, "probe": _probe(m["path"], prep_for(c.recipe).splits, recipe.bench)})
            known[tuple(c.keys)] = c
            done.append(c)

        def fits(c: _Candidate) -> tuple[bool, float | None]:
            if budget is None:
                return True, None
            est = estimate(c)
            left = budget - (clock() - started)
            return (est is None and left > 0) or (est is not None and est <= left), est

        run_one(base, 1)
        if method == "grid":
            for c in planned[1:]:
                ok, est = fits(c)
                if not ok:
                    skipped.append({"name": c.name, **c.point.as_dict(),
                                    "estimated_seconds": None if est is None else round(est, 2)})
                    continue
                run_one(c, len(done) + 1)
        else:
            _tpe(optuna, recipe, axes, n_planned, base, candidate, done, run_one, fits, skipped)
        stopped = bool(skipped)
        build_seconds = clock() - started

        say(f"[bold]measuring[/bold] {len(done)} candidate(s), the teacher and the scratch student together "
            "(test accuracy; latency interleaved in one session, cached by the models' keys)", quiet)
        t0 = clock()
        # Byte-identical files (two ratios that round to the same channel counts, say) are one model:
        # measured once and listed under every name, so timing noise cannot make a model dominate itself.
        first: dict[str, str] = {}
        same_as = {c.name: first.setdefault(pipeline.file_digest(Path(c.entry["path"])), c.name) for c in done}
        unique = [c for c in done if same_as[c.name] == c.name]
        entries = [{k: v for k, v in r.items() if k != "probe"} for r in refs] + [c.entry for c in unique]
        splits = prep_for(recipe).splits
        reused = cache.get_json("eval", pipeline.measure_key(recipe, splits, entries)) is not None
        models, eval_key = pipeline.measure(recipe, splits, entries, cache, quiet=True)
        measure_seconds = clock() - t0

        by_name = {m["name"]: m for m in models}
        objective = {c.name: _objectives(by_name[c.name]) for c in unique}
        on_front = dict(zip(objective, pareto(list(objective.values()))))
        rows = []
        for c in done:
            src = same_as[c.name]
            m, on = by_name[src], on_front[src]
            dominated_by = None if on else next(n for n in objective if dominates(objective[n], objective[src]))
            rows.append({"name": c.name, **c.point.as_dict(), "recipe": c.is_recipe, "frontier": on,
                         "dominated_by": dominated_by, "same_as": None if src == c.name else src,
                         "accuracy": m["accuracy"], "errors": m["errors"],
                         "val_accuracy": c.probe["val_accuracy"], "agreement": m["agreement"],
                         "size_bytes": m["size_bytes"], "latency_ms": m["latency_ms"],
                         "latency_batch_ms": m["latency_batch_ms"], "params": m["params"], "macs": m["macs"],
                         "path": str(c.entry["path"]), "key": c.entry["key"], "build_seconds": round(c.seconds, 2),
                         "stages": c.stages})
        references = [{"name": m["name"], "role": m["role"], "accuracy": m["accuracy"], "errors": m["errors"],
                       "val_accuracy": r["probe"]["val_accuracy"], "size_bytes": m["size_bytes"],
                       "latency_ms": m["latency_ms"], "latency_batch_ms": m["latency_batch_ms"],
                       "params": m["params"], "macs": m["macs"], "path": m["path"]}
                      for r, m in zip(refs, models)]
        result = {
            "name": recipe.name, "recipe_file": recipe.source_file, "method": method,
            "axes": {"ratios": list(axes.ratios), "modes": list(axes.modes), "widths": list(axes.widths)},
            "objectives": {"accuracy": "test split, max", "latency": "p50 ms, batch 1, 1 thread, min",
                           "size": "file bytes, min"},
            "budget_seconds": budget, "variants_planned": n_planned, "variants_run": len(done),
            "stopped_by_budget": stopped, "skipped": skipped,
            "frontier": [r["name"] for r in rows if r["frontier"]],
            "candidates": rows, "references": references, "measured_together": [m["name"] for m in models],
            "bench": recipe.bench.model_dump(), "cpu": cpu_info(), "eval_key": eval_key,
            "build_seconds": round(build_seconds, 2), "measure_seconds": round(measure_seconds, 2),
            "measurements_cached": reused,
            "search_seconds": round(clock() - started, 2),
            "files": {k: str(search_dir / f"search.{k}") for k in ("json", "md", "png")},
        }
        write(result, search_dir)
        result["search_seconds"] = round(clock() - started, 2)
        write_json(search_dir / "search.json", result)  # again, with the time the files took
        if not quiet:
            print_table(result)
        return result


def _tpe(optuna, recipe, axes: Axes, trials: int, base: _Candidate, candidate, done, run_one, fits, skipped) -> None:
    """Multi-objective TPE (optuna) over (validation accuracy, probe latency, size): the sampler never sees
    the test split. The ratio is continuous between the smallest and largest given (steps of 0.01)."""
    sampler = optuna.samplers.TPESampler(seed=recipe.seed, n_startup_trials=min(5, trials))
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=sampler)
    lo, hi = min(axes.ratios), max(axes.ratios)
    seen = {base.point: base}

    def values(c: _Candidate) -> list[float]:
        return [c.probe["val_accuracy"], c.probe["latency_ms"], float(Path(c.entry["path"]).stat().st_size)]

    own = {k: v for k, v, ok in (("ratio", base.point.ratio, lo <= base.point.ratio <= hi),
                                 ("mode", base.point.mode, base.point.mode in axes.modes),
                                 ("width", base.point.width, base.point.width in axes.widths)) if ok}
    study.enqueue_trial(own)  # the first trial: the recipe's own point, where it lies in the search space
    for _ in range(trials):
        trial = study.ask()
        ratio = round(trial.suggest_float("ratio", lo, hi, step=0.01), 2) if hi > lo else lo
        mode = trial.suggest_categorical("mode", list(axes.modes)) if len(axes.modes) > 1 else axes.modes[0]
        width = trial.suggest_categorical("width", list(axes.widths)) if len(axes.widths) > 1 else axes.widths[0]
        p = Point(ratio, mode, width)
        c = seen.get(p) or candidate(p)
        if not any(d is c for d in done):
            ok, est = fits(c)
            if not ok:
                skipped.append({"name": c.name, **p.as_dict(),
                                "estimated_seconds": None if est is None else round(est, 2)})
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
            run_one(c, len(done) + 1)
        seen[p] = c
        study.tell(trial, values(c))


# --- output ----------------------------------------------------------------------------------------


def _size(n: int) -> str:
    return f"{n / 1e3:,.1f} kB" if n < 1e6 else f"{n / 1e6:,.2f} MB"


HEADER = ["candidate", "ratio", "mode", "width", "frontier", "test acc", "val acc", "p50 b1 (us)", "p50 batch (ms)",
          "size", "params", "stages cached", "note"]


def _rows(result: dict) -> list[list[str]]:
    rows = []
    cands = sorted(result["candidates"], key=lambda r: (not r["frontier"], -r["accuracy"], r["latency_ms"]["p50"]))
    for r in cands:
        note = "; ".join(n for n in ("the recipe's own" if r["recipe"] else "",
                                     f"same file as {r['same_as']}" if r.get("same_as") else "") if n)
        if r["dominated_by"]:
            note = (note + "; " if note else "") + f"dominated by {r['dominated_by']}"
        cached = sum(s["cached"] for s in r["stages"])
        rows.append([r["name"], f"{r['ratio']:g}", r["mode"], "-" if r["width"] is None else str(r["width"]),
                     "yes" if r["frontier"] else "", f"{r['accuracy']:.2%}", f"{r['val_accuracy']:.2%}",
                     f"{r['latency_ms']['p50'] * 1e3:.1f}", f"{r['latency_batch_ms']['p50']:.3f}",
                     _size(r["size_bytes"]), f"{r['params']:,}" if r["params"] else "-",
                     f"{cached}/{len(r['stages'])}", note])
    for r in result["references"]:
        rows.append([r["name"], "", "", "", "", f"{r['accuracy']:.2%}", f"{r['val_accuracy']:.2%}",
                     f"{r['latency_ms']['p50'] * 1e3:.1f}", f"{r['latency_batch_ms']['p50']:.3f}",
                     _size(r["size_bytes"]), f"{r['params']:,}" if r["params"] else "-", "", "reference"])
    return rows


def _summary(result: dict) -> list[str]:
    lines = [f"{result['method']} search: {result['variants_run']} of {result['variants_planned']} planned variant(s) "
             f"built in {result['build_seconds']:.1f} s, "
             + ("measurements reused from the cache (the same models, settings and CPU); "
                if result.get("measurements_cached") else
                f"measured together in {result['measure_seconds']:.1f} s; ")
             + f"{len(result['frontier'])} on the Pareto frontier; {result['search_seconds']:.1f} s in all."]
    same = [r for r in result["candidates"] if r.get("same_as")]
    if same:
        lines.append(f"{len(same)} candidate(s) gave a file byte-identical to another's (e.g. two ratios that round to "
                     "the same channel counts): measured once, listed under each name.")
    if result["budget_seconds"]:
        if result["stopped_by_budget"]:
            lines.append(f"The budget of {result['budget_seconds']:g} s left out {len(result['skipped'])} variant(s) "
                         f"whose estimated build and measurement would not fit: "
                         + ", ".join(s["name"] for s in result["skipped"]) + ".")
        else:
            lines.append(f"Every planned variant fitted in the budget of {result['budget_seconds']:g} s.")
    b = result["bench"]
    lines.append("Test accuracy on the held-out test split (no stage trained, selected or calibrated on it); "
                 "val acc is the validation split's, the one to choose by. Latency: every candidate, the teacher and "
                 f"the scratch student timed in one interleaved onnxruntime session ({b['rounds']} rounds x "
                 f"{b['calls']} calls at batch 1 on 1 thread; batch {b['batch']} on "
                 f"{b['threads'] or 'all'} thread(s)).")
    lines.append("Frontier: no other candidate is at least as accurate, as fast (p50, batch 1) and as small, and "
                 "better in one. Points whose latencies differ by less than the run-to-run noise (a few %) can "
                 "swap places between runs.")
    return lines


def markdown(result: dict) -> str:
    out = [f"# compress search: {result['name']}", ""]
    out += [f"- {line}" for line in _summary(result)]
    a = result["axes"]
    out += [f"- Axes: ratios {', '.join(f'{r:g}' for r in a['ratios'])}; modes {', '.join(a['modes'])}; widths "
            f"{', '.join('-' if w is None else str(w) for w in a['widths'])}. Ratio 0 = no prune stage; "
            "fp32 = no quantize stage.",
            f"- CPU: {result['cpu'].get('model') or result['cpu'].get('machine')}", "",
            "| " + " | ".join(HEADER) + " |", "|" + "|".join("---" if h in ("candidate", "mode", "note") else "---:" for h in HEADER) + "|"]
    out += ["| " + " | ".join(c or " " for c in row) + " |" for row in _rows(result)]
    if result["skipped"]:
        out += ["", "Not built (budget):", ""]
        out += [f"- {s['name']}" + (f" (estimated {s['estimated_seconds']:.1f} s)" if s["estimated_seconds"] else "")
                for s in result["skipped"]]
    out += ["", f"![accuracy vs latency]({Path(result['files']['png']).name})", ""]
    return "\n".join(out)


def plot(result: dict, path: Path) -> None:
    """Test accuracy vs p50 latency (batch 1), marker area = file size, the frontier connected; the
    teacher, the scratch student and the recipe's own result marked."""
    from compress._plot import figure, label_points, plain_log_ticks, save

    # Areas scale with the candidates' sizes (a teacher 50x bigger would shrink them all to dots); a
    # larger reference is drawn at the largest area.
    biggest = max(m["size_bytes"] for m in result["candidates"])
    area = lambda m: 30 + 600 * min(m["size_bytes"] / biggest, 1.5)  # noqa: E731
    fig, ax = figure()
    labels = []
    for m in result["candidates"]:
        x, y = m["latency_ms"]["p50"] * 1e3, m["accuracy"] * 100
        ax.scatter([x], [y], s=area(m), c="#2ca02c" if m["frontier"] else "#1f77b4", alpha=0.55,
                   edgecolors="black", linewidths=1.8 if m["recipe"] else 0.5, zorder=3)
        labels.append((x, y, m["name"] + (" (recipe)" if m["recipe"] else ""), "black"))
    # The line: the accuracy-latency frontier (a staircase); the green points: the frontier with size counted too.
    two = [(m["accuracy"], m["latency_ms"]["p50"], 0.0) for m in result["candidates"]]
    front = sorted((m for m, on in zip(result["candidates"], pareto(two)) if on), key=lambda m: m["latency_ms"]["p50"])
    if front:
        ax.step([m["latency_ms"]["p50"] * 1e3 for m in front], [m["accuracy"] * 100 for m in front], where="post",
                color="#2ca02c", lw=1.2, zorder=2, label="accuracy-latency frontier")
    marks = {"teacher": ("*", "#d62728"), "scratch": ("s", "#7f7f7f")}
    for m in result["references"]:
        mk, col = marks.get(m["role"], ("o", "black"))
        x, y = m["latency_ms"]["p50"] * 1e3, m["accuracy"] * 100
        ax.scatter([x], [y], s=area(m), marker=mk, c=col, alpha=0.7, edgecolors="black", linewidths=0.5, zorder=3)
        labels.append((x, y, m["name"], col))
    ax.set_xscale("log")
    label_points(ax, fig, labels, width=120, step=12, offset=7, fontsize=7)
    plain_log_ticks(ax, labelsize=7)
    ax.set_xlabel("latency p50, batch 1, 1 thread (us, log scale; one interleaved session)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{result['name']}: {result['variants_run']} candidates, {len(result['frontier'])} on the frontier "
                 "(marker area = file size)")
    ax.grid(True, which="both", alpha=0.3)
    ax.scatter([], [], c="#2ca02c", alpha=0.55, label="frontier (accuracy, latency, size)")
    ax.scatter([], [], c="#1f77b4", alpha=0.55, label="dominated")
    ax.scatter([], [], facecolors="none", edgecolors="black", linewidths=1.8, label="the recipe's own")
    for role, (mk, col) in marks.items():
        if any(m["role"] == role for m in result["references"]):
            ax.scatter([], [], marker=mk, c=col, label=role)
    ax.legend(loc="best", fontsize=7, framealpha=0.7)
    save(fig, path)


def write(result: dict, out_dir: Path) -> None:
    write_json(out_dir / "search.json", result)
    write_text(out_dir / "search.md", markdown(result))
    plot(result, out_dir / "search.png")


def print_table(result: dict) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"compress search: {result['name']} (test split; latency interleaved in one session)")
    for h in HEADER:
        table.add_column(h, justify="left" if h in ("candidate", "mode", "note") else "right",
                         no_wrap=h in ("candidate", "mode"))
    for row in _rows(result):
        table.add_row(*row, style="bold green" if row[4] == "yes" else None)
    console = Console(width=None if sys.stdout.isatty() else 180)
    console.print(table)
    for line in _summary(result)[:2]:
        console.print(line)
    console.print(f"search: {result['files']['md']}")
