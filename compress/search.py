"""``compress search``: variants of one recipe over pruning ratio x quantization mode x student width.

Every variant is the recipe with those three values changed, built by ``pipeline.build`` against the
shared cache, so variants share the teacher, the scratch baseline and every stage before the first one
that differs. Nothing is timed per variant: the final model of every candidate, the teacher and the
scratch student are measured together at the end, in one interleaved session, on the test split that no
stage trained or calibrated on. The Pareto frontier is taken over (test quality, p50 latency, file size
down), quality oriented by the task's metric. How each task takes the three values: ``_Classify``, ``_LM``
and docs/search.md. With ``--storage URL`` the search is an optuna study that many worker processes build
from; ``--report`` then measures the finished candidates together (see "a search on an optuna storage").
"""

from __future__ import annotations

import contextlib
import functools
import time
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from compress._io import write_json, write_text
from compress._progress import say
from compress.errors import CompressError, MissingExtraError, RecipeError

__all__ = ["Axes", "Point", "SearchError", "parse_axes", "quantize_modes", "variant", "objectives", "pareto", "search",
           "open_storage", "markdown", "plot", "print_table"]

FP32 = "fp32"
METHODS = ("grid", "tpe")


class SearchError(CompressError):
    """Bad search arguments (an unknown mode, a ratio out of range): found before any compute."""

    exit_code = 2


def quantize_modes(task: str) -> list[str]:
    """``fp32`` plus every mode the task's quantize stage accepts (read off its config, so new modes join)."""
    from compress.stages.base import stages_for

    config = stages_for(task)["quantize"].config
    return [FP32, *typing.get_args(config.model_fields["mode"].annotation)]


@dataclass(frozen=True)
class Point:
    """One variant: the three values a search changes. ``width`` is None for a factory-built student."""

    ratio: float
    mode: str
    width: int | None

    @property
    def name(self) -> str:
        return f"r{self.ratio:g}-{self.mode}" + (f"-w{self.width}" if self.width is not None else "")


@dataclass(frozen=True)
class Axes:
    ratios: tuple[float, ...]
    modes: tuple[str, ...]
    widths: tuple[int | None, ...]

    def grid(self) -> list[Point]:
        return [Point(r, m, w) for w in self.widths for r in self.ratios for m in self.modes]

    def as_dict(self) -> dict:
        return {"ratios": list(self.ratios), "modes": list(self.modes), "widths": list(self.widths)}


# --- what differs between tasks ----------------------------------------------------------------------


class _Task:
    """What a search asks of the recipe's task; the metric and its direction come from the pipeline's task adapter."""

    name = ""
    exclude_unset = False  # what variant() edits: the recipe's keys, defaults included
    ratio_keys: tuple[str, ...] = ()  # the prune keys the ratio sets, those the recipe does not leave at 0
    int4_only: tuple[str, ...] = ()  # quantize keys reset to their defaults when the mode changes

    @functools.cached_property
    def _metric(self) -> tuple[str, bool]:
        """The quality measured on the test split (``accuracy`` or ``bits_per_byte``) and whether higher is better."""
        from compress.pipeline import task_named

        return task_named(self.name).metric

    metric = property(lambda self: self._metric[0])
    higher = property(lambda self: self._metric[1])

    def set_ratio(self, st: dict, cfg, ratio: float) -> dict:
        return {**st, **{k: ratio for k in self.ratio_keys if getattr(cfg, k) != 0}}

    def own_ratio(self, cfg) -> float:
        return max(getattr(cfg, k) for k in self.ratio_keys)

    def set_mode(self, st: dict, cfg, mode: str) -> dict:
        if cfg.mode == mode:
            return st
        drop = self.int4_only if mode != "int4_weight_only" else ()
        return {**{k: v for k, v in st.items() if k not in drop}, "mode": mode}


class _Classify(_Task):
    """``task: classify``: the ratio is every prune stage's ``ratio`` and every quantize stage takes the mode; the
    probe is validation accuracy and a rough batch-1 latency; the final session is ``pipeline.measure``."""

    name = "classify"
    ratio_keys = ("ratio",)
    one_quantize = False  # quantize stages in a row each quantize the one before: every one takes the mode
    prune_example = "{type: prune, ratio: 0.3}"
    width_unit = "channels (cnn) or units (mlp)"
    no_width = ("the student is built by a factory; a search can change the width of a built-in student only "
                "(student.model.arch: cnn or mlp)")
    columns = ("test acc", "val acc", "p50 b1 (us)")  # the table's quality and latency columns
    number = ".2%"  # how the table writes the metric
    plot_scale = 100  # the figure's y: accuracy in %
    quality = "accuracy"  # search.md's figure
    latency = "p50 ms, batch 1, 1 thread, min"
    ylabel = "test accuracy (%)"
    xlabel = "latency p50, batch 1, 1 thread (us, log scale; one interleaved session)"

    def probe(self, path, prep, recipe) -> dict:
        """Validation accuracy and a rough latency of one file: what TPE optimizes and what the budget
        reserves for the final session. Never reported as the candidate's latency (that comes from the one
        interleaved session at the end)."""
        from compress.bench import time_interleaved
        from compress.runtimes.onnxruntime import load

        splits, bench = prep.splits, recipe.bench
        t0 = time.perf_counter()
        runner = load(path, threads=1)
        val_acc = float((runner.predict(splits.val.x).argmax(1) == splits.val.y).mean())
        setup = time.perf_counter() - t0
        one = time_interleaved({"1": runner.timer(splits.test.x[:1])}, rounds=7, calls=1, warmup=3)["1"]
        xb = np.resize(splits.test.x, (bench.batch, *splits.test.x.shape[1:]))  # the test split repeated to a batch
        big = time_interleaved({"b": load(path, threads=bench.threads).timer(xb)}, rounds=1, calls=1, warmup=1)["b"]
        return {"val_accuracy": val_acc, "latency_ms": one.p50, "batch_ms": big.p50, "setup_s": setup}

    def session(self, p: dict, recipe) -> float:
        """Seconds the final interleaved session will take for a model with probe ``p`` (evaluate's protocol:
        10 warm-up calls + rounds x calls at batch 1, 3 + rounds x calls/4 at the large batch, 3 sessions each)."""
        b = recipe.bench
        return (3 * p["setup_s"] + (10 + b.rounds * b.calls) * p["latency_ms"] / 1e3
                + (3 + b.rounds * max(1, b.calls // 4)) * p["batch_ms"] / 1e3)

    def measure(self, recipe, prep, entries: list[dict], cache) -> tuple[list[dict], dict]:
        """Test accuracy and interleaved latency (pipeline.measure); models at chance level flagged. Returns the
        models and what search.json adds."""
        from compress import pipeline
        from compress.report import chance_level

        splits = prep.splits
        models, _ = pipeline.measure(recipe, splits, entries, cache, quiet=True)
        chance = chance_level(np.bincount(splits.test.y, minlength=splits.num_classes).tolist())
        for m in models:
            m["at_chance"] = m["accuracy"] <= chance["threshold"]
        return models, {"chance": chance}

    def notes(self, result: dict) -> list[str]:
        b = result["bench"]
        return ["Test accuracy on the held-out test split (no stage trained, selected or calibrated on it); "
                "val acc is the validation split's, the one to choose by. Latency: every candidate, the teacher and "
                f"the scratch student timed in one interleaved onnxruntime session ({b['rounds']} rounds x "
                f"{b['calls']} calls at batch 1 on 1 thread; batch {b['batch']} on "
                f"{b['threads'] or 'all'} thread(s)).",
                "Frontier: no other candidate is at least as accurate, as fast (p50, batch 1) and as small, and "
                "better in one. Points whose latencies differ by less than the run-to-run noise (a few %) can "
                "swap places between runs."]


class _LM(_Task):
    """``task: lm``: the ratio sets the prune stage's ``heads`` and ``mlp`` (each one the recipe gives above 0) and
    one quantize stage, the recipe's last, takes the mode; the probe is validation bits/byte and a rough decode time
    per token; the final session is ``LMTask.measure``."""

    name = "lm"
    ratio_keys = ("heads", "mlp")
    one_quantize = True  # quantize stages in a row sit side by side on one export: a variant keeps the last one
    int4_only = ("block_size", "accuracy_level", "fallback")
    prune_example = "{type: prune, heads: 0.3, mlp: 0.3}"
    width_unit = "units (the gpt student's width)"
    no_width = ("the student is a Hugging Face folder (hf:), whose width is its config's; a search can change the "
                "width of the built-in student only (student.model.arch: gpt)")
    columns = ("test bpb", "val bpb", "p50/token (us)")
    number = ".4f"
    plot_scale = 1
    quality = "bits/byte"
    latency = "p50 ms per decoded token (KV cache), 1 thread, min"
    ylabel = "test bits per byte (lower is better)"
    xlabel = "decode latency per token p50, 1 thread (us, log scale; one interleaved session)"
    # Only what the recipe set: an hf model spec refuses width/layers/heads, and a teacher's missing ``train`` means
    # "used as loaded" (compress.lm.task), so defaults must stay unset.
    exclude_unset = True

    def probe(self, path, prep, recipe) -> dict:
        """Validation bits/byte of one LM file (compress.lm.train.evaluate_lm on the validation split's windows) and
        a rough decode time per token at 1 thread (greedy, with the KV cache, after the bench prompt): what TPE
        optimizes and what the budget reserves for the final session. Never reported as the candidate's latency."""
        from compress.lm.data import eval_windows
        from compress.lm.onnx import OrtDecoder, bench_generation
        from compress.lm.train import evaluate_lm

        t0 = time.perf_counter()
        val = eval_windows(prep.splits.val, recipe.teacher.model.context, recipe.eval.max_tokens)
        bpb = evaluate_lm(OrtDecoder(path, threads=0).logits, val).bits_per_byte
        eval_s = time.perf_counter() - t0
        b = recipe.bench
        row = bench_generation({"m": path}, val[:1, :b.prompt], b.new_tokens, threads=[1], rounds=5, calls=1)[0]
        return {"val_bits_per_byte": float(bpb), "latency_ms": row["decode_ms"]["p50"] / b.new_tokens,
                "prefill_ms": row["ttft_ms"]["p50"], "eval_s": eval_s}

    def session(self, p: dict, recipe) -> float:
        """Seconds LMTask.measure will take for a file with probe ``p``: scored on the test split (about as long as
        on validation: both capped at eval.max_tokens), prefill + decode timed 2 + rounds x calls times at 1 and at
        all threads, and the greedy samples."""
        from compress.lm.onnx import all_threads

        b, s = recipe.bench, recipe.samples
        call = (p["prefill_ms"] + b.new_tokens * p["latency_ms"]) / 1e3
        return (p["eval_s"] + len({1, all_threads()}) * (2 + b.rounds * b.calls) * call
                + s.count * (p["prefill_ms"] + s.new_tokens * p["latency_ms"]) / 1e3)

    def measure(self, recipe, prep, entries: list[dict], cache) -> tuple[list[dict], dict]:
        """Test bits/byte, perplexity, agreement and per-token decode latency (LMTask.measure, one interleaved
        benchmark); the models, nothing more for search.json."""
        from compress.pipeline import task_of

        return task_of(recipe).measure(recipe, prep, entries, cache, quiet=True)[0], {}

    def notes(self, result: dict) -> list[str]:
        b = result["bench"]
        return ["Test bits per byte (lower is better) on the held-out test split's documents (no stage trained, "
                "selected or calibrated on them); val bpb is the validation split's, the one to choose by. Latency: "
                "decode time per token with the KV cache on 1 thread, every candidate, the teacher and the scratch "
                f"student timed in one interleaved onnxruntime session ({b['rounds']} rounds x {b['calls']} calls "
                f"of {b['new_tokens']} tokens after a {b['prompt']}-byte prompt).",
                "Frontier: no other candidate has at most its bits per byte, decode latency (p50) and size, and is "
                "better in one. Points whose latencies differ by less than the run-to-run noise (a few %) can swap "
                "places between runs."]


_TASKS: dict[str, _Task] = {"classify": _Classify(), "lm": _LM()}


def _task(recipe_or_result) -> _Task:
    """The adapter of a recipe (its ``task``) or of a search.json (its ``task``; classify before it was written)."""
    name = recipe_or_result.get("task") if isinstance(recipe_or_result, dict) else recipe_or_result.task
    return _TASKS[name or "classify"]


class _Seen:
    """A cache that notes the ``eval`` entry it was asked for and whether one was stored (measured afresh)."""

    def __init__(self, cache):
        self._cache, self.key, self.stored = cache, None, False

    def get_json(self, kind: str, key: str):
        if kind == "eval":
            self.key = key
        return self._cache.get_json(kind, key)

    def put_json(self, kind: str, key: str, value) -> None:
        if kind == "eval":
            self.key, self.stored = key, True
        return self._cache.put_json(kind, key, value)

    def __getattr__(self, name: str):
        return getattr(self._cache, name)


# --- the axes and the variants -------------------------------------------------------------------------


def _split(values) -> list[str]:
    """``("0.2,0.3", "0.5")`` -> ``["0.2", "0.3", "0.5"]``: repeated flags and comma lists both work."""
    return [p.strip() for v in values for p in str(v).split(",") if p.strip()]


def _numbers(flag: str, values: list, kind, what: str, ok, out_of_range: str) -> list:
    """``values`` as numbers of ``kind`` (None stays None), each checked by ``ok``."""
    out = []
    for v in values:
        try:
            x = v if v is None else kind(v)
        except ValueError:
            raise SearchError(f"{flag}: {v!r} is not {what}") from None
        if x is not None and not ok(x):
            raise SearchError(f"{flag}: {v} is out of range; {out_of_range}")
        out.append(x)
    return out


def parse_axes(recipe, ratios=None, modes=None, widths=None) -> Axes:
    """The search axes from the command line's strings, checked against the recipe. None: the defaults, ratios 0.2,
    0.3, 0.5 and the recipe's own; fp32 and the task's int8_static, int8_dynamic, int4_weight_only; its width."""
    own = own_point(recipe)
    valid_modes = quantize_modes(recipe.task)
    got_ratios = _numbers("--ratios", _split(ratios) if ratios else ["0.2", "0.3", "0.5", f"{own.ratio:g}"], float,
                          "a number; give fractions of channels removed, e.g. 0.2,0.3,0.5 (0 = no prune stage)",
                          lambda r: 0 <= r < 1, "a ratio is in [0, 1) (0 = no prune stage)")
    got_modes = _split(modes) if modes else [m for m in valid_modes if m in (FP32, "int8_static", "int8_dynamic",
                                                                               "int4_weight_only")]
    for m in got_modes:
        if m not in valid_modes:
            import difflib

            close = difflib.get_close_matches(m, valid_modes, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise SearchError(f"--modes: unknown mode {m!r}; {hint}valid choices: {', '.join(valid_modes)}")
    got_widths = _numbers("--widths", _split(widths) if widths else [own.width], int,
                          f"a whole number of {_task(recipe).width_unit}", lambda w: 1 <= w <= 4096,
                          "a student width is 1 to 4096")
    axes = Axes(tuple(dict.fromkeys(sorted(round(r, 4) for r in got_ratios))), tuple(dict.fromkeys(got_modes)),
                tuple(dict.fromkeys(got_widths)))
    _check_recipe_allows(recipe, axes)
    return axes


def own_point(recipe) -> Point:
    """The recipe's own values: its first prune stage's ratio (0 without one; an LM's larger of ``heads`` and
    ``mlp``), its last quantize mode (fp32 without one), its student's width (None for a factory or hf student)."""
    prunes = [st for st in recipe.stages if st.type == "prune"]
    quants = [st for st in recipe.stages if st.type == "quantize"]
    spec = recipe.student.model
    return Point(_task(recipe).own_ratio(prunes[0]) if prunes else 0.0, quants[-1].mode if quants else FP32,
                 spec.width if spec.arch is not None else None)


def _check_recipe_allows(recipe, axes: Axes) -> None:
    """Each axis needs something in the recipe to change; say what to add, at the recipe key."""
    from compress.stages.base import stages_for

    own, task = own_point(recipe), _task(recipe)
    types = [st.type for st in recipe.stages]
    if "prune" not in types and any(r > 0 for r in axes.ratios):
        raise recipe.error_at("--ratios: the recipe has no prune stage to set a ratio on; add one, e.g. "
                              f"{task.prune_example}, or search --ratios 0 only", "stages")
    if "quantize" not in types and any(m != FP32 for m in axes.modes):
        if stages_for(recipe.task)[recipe.stages[-1].type].produces != "onnx":
            raise recipe.error_at("--modes: the recipe has no quantize stage and its chain ends in a torch model; "
                                  "add {type: export} so that a quantize stage can follow, or search --modes fp32 only",
                                  "stages")
    if any(w != own.width for w in axes.widths):
        if own.width is None:
            raise recipe.error_at(f"--widths: {task.no_width}", "student", "model")
        if getattr(recipe.student, "from_teacher", None) is not None:
            raise recipe.error_at("--widths: the student is derived from the teacher (from_teacher); give it "
                                  "student.model instead to search over its width", "student", "from_teacher")
        for w in axes.widths:  # a width the student's spec refuses (a gpt's heads must divide it): named here
            try:
                variant(recipe, Point(own.ratio, own.mode, w))
            except RecipeError as exc:
                raise recipe.error_at(f"--widths {w}: {exc.message}", "student", "model") from None


def variant(recipe, p: Point, name: str | None = None):
    """The recipe with ``p``'s ratio, mode and width, re-validated (a bad combination fails here, at no cost).
    Ratio 0 drops every prune stage, ``fp32`` every quantize stage; a quantize stage is appended after the last
    stage when the recipe has none. How a stage takes the ratio and the mode is the task's (``_TASKS``)."""
    from compress.recipe import parse_recipe

    task = _task(recipe)
    data = recipe.model_dump(mode="json", by_alias=True, exclude={"source_file"}, exclude_unset=task.exclude_unset)
    last_quantize = max((i for i, st in enumerate(recipe.stages) if st.type == "quantize"), default=None)
    stages = []
    for i, (cfg, st) in enumerate(zip(recipe.stages, data["stages"])):
        if st["type"] == "prune":
            if p.ratio == 0:
                continue
            st = task.set_ratio(st, cfg, p.ratio)
        elif st["type"] == "quantize":
            if p.mode == FP32 or (task.one_quantize and i != last_quantize):
                continue
            st = task.set_mode(st, cfg, p.mode)
        stages.append(st)
    if p.mode != FP32 and not any(st["type"] == "quantize" for st in stages):
        stages.append({"type": "quantize", "mode": p.mode})
    data["stages"] = stages
    student = data["student"]
    if student.get("from_teacher") is not None:
        student.pop("model")  # derived again, identically, by the recipe's validator
    elif p.width is not None:
        student["model"] = {**student["model"], "width": p.width}
    if name is not None:
        data["name"] = name
    return parse_recipe(data, recipe.source_file, dict(recipe._lines))


# --- the frontier ----------------------------------------------------------------------------------


def objectives(m: dict, metric: tuple[str, bool] = ("accuracy", True)) -> tuple[float, float, float]:
    """(quality, p50 latency, file size) of a measured model, the quality (``metric``: name, higher is better)
    oriented so that higher is better (bits per byte negated): what ``dominates`` and ``pareto`` compare."""
    name, higher = metric
    return (m[name] if higher else -m[name]), m["latency_ms"]["p50"], m["size_bytes"]


def dominates(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """``a`` is at least as good (quality up), as fast and as small as ``b``, and strictly better in one of them."""
    return a[0] >= b[0] and a[1] <= b[1] and a[2] <= b[2] and (a[0] > b[0] or a[1] < b[1] or a[2] < b[2])


def pareto(points: list[tuple[float, float, float]]) -> list[bool]:
    """For each (quality, latency, size), quality higher-is-better: True when no other point dominates it."""
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
    worker: str | None = None  # a storage search: the worker that built it (host:pid) and its trial number
    trial: int | None = None

    @property
    def key(self) -> str:
        """One digest of the whole chain: two candidates with the same key are the same model."""
        from compress.cache import cache_key

        return cache_key("variant", list(self.keys))


def _optuna(what: str = "compress search --method tpe"):
    try:
        import optuna
    except ImportError:
        raise MissingExtraError(what, "search", "optuna") from None
    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats, fail_stale_trials and RetryHeartbeatStaleTrialCallback are marked experimental, and ask() on a
    # storage with a heartbeat warns that heartbeats are meant for optimize(): this module beats itself.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    return optuna


def _scores(m: dict, probe: dict, metric: str) -> dict:
    """A measured model's numbers in search.json, the metric on the test split and on validation (the probe's). What a
    task does not measure (an LM's errors, MACs, batch latency) is None; the chance-level flag is classification's."""
    return {metric: m[metric], "errors": m.get("errors"), f"val_{metric}": probe[f"val_{metric}"],
            **({"perplexity": m["perplexity"]} if "perplexity" in m else {}), "agreement": m.get("agreement"),
            "size_bytes": m["size_bytes"], "latency_ms": m["latency_ms"], "latency_batch_ms": m.get("latency_batch_ms"),
            "params": m["params"], "macs": m.get("macs"), **({"at_chance": m["at_chance"]} if "at_chance" in m else {})}


class _Search:
    """What every way of searching (one process, a storage worker, the report) shares. Everything that can fail
    without compute fails in the constructor."""

    def __init__(self, recipe, output, axes: Axes, *, budget, quiet: bool, clock, started: float):
        from compress import pipeline
        from compress._io import inside

        self.recipe, self.axes, self.budget, self.quiet, self.clock, self.started = (recipe, axes, budget, quiet,
                                                                                     clock, started)
        self.task = _task(recipe)
        self.out_dir = pipeline.output_dir(recipe, output)
        self.search_dir, self.cache = inside(self.out_dir, "search"), pipeline.output_cache(self.out_dir)
        self.preps: dict = {}
        own = own_point(recipe)
        self.base = _Candidate(own, own.name, recipe, pipeline.chain_keys(recipe, self.prep_for(recipe)), is_recipe=True)
        if pipeline.chain_keys(variant(recipe, own), self.preps[own.width]) != self.base.keys:
            self.base.name = "recipe"  # e.g. two prune stages with different ratios, or an LM's several quantize
            # stages side by side: no grid point is the recipe
        self.known: dict[tuple, _Candidate] = {tuple(self.base.keys): self.base}  # same stage keys = the same model
        self.stage_seconds: dict[tuple[int, str], float] = {}  # (index, type) -> the longest fresh computation seen
        self.done: list[_Candidate] = []
        self.refs: list[dict] = []
        self.skipped: list[dict] = []

    def prep_for(self, r):
        from compress import pipeline

        w = own_point(r).width
        if w not in self.preps:
            self.preps[w] = pipeline.prepare(r)
        return self.preps[w]

    def candidate(self, p: Point) -> _Candidate:
        from compress import pipeline

        r = variant(self.recipe, p, name=f"{self.recipe.name}.{p.name}")
        r = r.model_copy(update={"baseline": "none"})  # the scratch baseline comes from the recipe's own build
        c = _Candidate(p, p.name, r, pipeline.chain_keys(r, self.prep_for(r)))
        return self.known.get(tuple(c.keys), c)

    def plan(self, method: str, trials: int | None) -> tuple[list[_Candidate], int]:
        """What is queued and how many variants are planned: for a grid, the recipe's own variant, then every grid
        point that is a different model; for TPE, the recipe's own point and ``trials`` (default 20), every width
        checked before any compute as the grid's are (TPE samples the rest later)."""
        if method == "tpe":
            for w in self.axes.widths:
                self.candidate(Point(self.axes.ratios[0], self.axes.modes[0], w))
            return [self.base], trials or 20
        queue = [self.base]
        for p in self.axes.grid():
            c = self.candidate(p)
            if tuple(c.keys) not in self.known:
                self.known[tuple(c.keys)] = c
                queue.append(c)
        return queue, len(queue)

    def estimate(self, c: _Candidate, session: bool = True) -> float | None:
        """Seconds to build ``c`` (and, with ``session``, to measure it in the final session); None when
        nothing is known yet."""
        from compress.cache import STAGE_KIND

        total, times = 0.0, self.stage_seconds
        for i, (st, key) in enumerate(zip(c.recipe.stages, c.keys)):
            if self.cache.has(STAGE_KIND, key):
                continue
            if not times:
                return None  # nothing computed yet (a warm cache): launch it and learn
            # This stage's time, else the slowest of its type, else (a type not computed yet) the slowest seen.
            total += times.get((i, st.type), max([s for (_, t), s in times.items() if t == st.type] or times.values()))
        if not session:
            return total
        probes = [d.probe for d in self.done if d.probe] + [r["probe"] for r in self.refs]
        seconds = [self.task.session(p, self.recipe) for p in probes]
        return total + sum(seconds) + max(seconds, default=0.0)  # c itself counted as the slowest model seen

    def fits(self, c: _Candidate, session: bool = True) -> tuple[bool, float | None]:
        if self.budget is None:
            return True, None
        est = self.estimate(c, session)
        left = self.budget - (self.clock() - self.started)
        return (left > 0 if est is None else est <= left), est

    def skip(self, c: _Candidate, est: float | None) -> dict:
        return {"name": c.name, **asdict(c.point), "estimated_seconds": None if est is None else round(est, 2)}

    @contextlib.contextmanager
    def lock(self, c: _Candidate):
        """One builder of a variant's folder at a time, across processes on this output root (another search or
        worker waits here): staging() clears the folder's stale partial builds, safe only while nobody builds in it."""
        from compress._io import claim_file, inside

        folder = inside(self.search_dir, "variants")
        folder.mkdir(parents=True, exist_ok=True)
        with claim_file(inside(folder, f"{c.name}.lock")):
            yield

    def build(self, c: _Candidate) -> None:
        """Build ``c`` (its stages from the cache where they are there) into ``search/variants/<name>/`` and probe it.
        Hold ``lock(c)`` around it."""
        from compress import pipeline
        from compress._io import inside, publish, staging

        say(f"[bold magenta]variant {len(self.done) + 1}[/bold magenta] {c.name}"
            + (" (the recipe's own)" if c.is_recipe else ""), self.quiet)
        t0 = self.clock()
        # Built in a staging folder and published whole: an earlier search's files for this variant are
        # replaced only by a complete new set.
        vdir = inside(self.search_dir, "variants", c.name)
        with staging(vdir) as sdir:
            built = pipeline.build(c.recipe, self.prep_for(c.recipe), sdir, self.cache, quiet=self.quiet)
            publish(sdir, vdir, pipeline.OWNED)
            built = pipeline.relocate(built, sdir, vdir)
        c.seconds = self.clock() - t0
        c.stages = [{"type": s["type"], "cached": s["cached"], "seconds": s["seconds"]} for s in built.stage_log]
        for i, (s, key) in enumerate(zip(built.stage_log, c.keys)):
            # How long each stage took to compute, kept beside the cache: a later search whose stages
            # are cached still knows what computing one more variant costs.
            if not s["cached"]:
                self.cache.put_json("search-seconds", key, {"type": s["type"], "seconds": s["seconds"]})
            took = s["seconds"] if not s["cached"] else (self.cache.get_json("search-seconds", key) or {}).get("seconds")
            if isinstance(took, (int, float)):
                self.stage_seconds[(i, s["type"])] = max(self.stage_seconds.get((i, s["type"]), 0.0), took)
        final = built.measured[-1]
        c.entry = {**final, "name": c.name, "role": "candidate"}
        prep = self.prep_for(c.recipe)
        c.probe = self.task.probe(final["path"], prep, self.recipe)
        if c.is_recipe:  # the references: the recipe's own build trains the teacher and the scratch student
            self.refs = [{**m, "probe": self.task.probe(m["path"], prep, self.recipe)}
                         for m in built.measured if m["role"] in ("teacher", "scratch")]
        self.known[tuple(c.keys)] = c
        self.done.append(c)

    def run_one(self, c: _Candidate) -> None:
        with self.lock(c):
            self.build(c)

    def run_if_it_fits(self, c: _Candidate) -> bool:
        """Build ``c`` when the budget affords it (and its measurement); else note it skipped. Whether it was built."""
        ok, est = self.fits(c)
        if not ok:
            self.skipped.append(self.skip(c, est))
            return False
        self.run_one(c)
        return True

    def finish(self, method: str, n_planned: int, build_seconds: float, extra: dict | None = None) -> dict:
        """Measure every candidate, the teacher and the scratch student in one interleaved session; the
        frontier; search.json, search.md and search.png. Returns the search.json content."""
        from compress._io import claim_file, inside
        from compress.bench import cpu_info
        from compress.cache import sha256_file

        done, refs, recipe, search_dir, task = self.done, self.refs, self.recipe, self.search_dir, self.task
        say(f"[bold]measuring[/bold] {len(done)} candidate(s), the teacher and the scratch student together "
            f"(test {task.quality}; latency interleaved in one session, cached by the models' keys)", self.quiet)
        t0 = self.clock()
        # Byte-identical files (two ratios that round to the same channel counts, say) are one model:
        # measured once and listed under every name, so timing noise cannot make a model dominate itself.
        first: dict[str, str] = {}
        same_as = {c.name: first.setdefault(sha256_file(c.entry["path"]), c.name) for c in done}
        unique = [c for c in done if same_as[c.name] == c.name]
        entries = [{k: v for k, v in r.items() if k != "probe"} for r in refs] + [c.entry for c in unique]
        seen = _Seen(self.cache)  # the measurement's cache key, and whether it came from the cache
        models, measured_extra = task.measure(recipe, self.prep_for(recipe), entries, seen)
        measure_seconds = self.clock() - t0

        by_name = {m["name"]: m for m in models}
        objective = {c.name: objectives(by_name[c.name], task._metric) for c in unique}
        on_front = dict(zip(objective, pareto(list(objective.values()))))
        rows = []
        for c in done:
            src = same_as[c.name]
            m, on = by_name[src], on_front[src]
            dominated_by = None if on else next(n for n in objective if dominates(objective[n], objective[src]))
            rows.append({"name": c.name, **asdict(c.point), "recipe": c.is_recipe, "frontier": on,
                         "dominated_by": dominated_by, "same_as": None if src == c.name else src,
                         **_scores(m, c.probe, task.metric), "path": str(c.entry["path"]), "key": c.entry["key"],
                         "build_seconds": round(c.seconds, 2), "stages": c.stages,
                         **({"built_by": c.worker, "trial": c.trial} if c.worker is not None else {})})
        references = [{"name": m["name"], "role": m["role"], **_scores(m, r["probe"], task.metric), "path": m["path"]}
                      for r, m in zip(refs, models)]
        result = {
            "name": recipe.name, "recipe_file": recipe.source_file, "task": recipe.task, "metric": task.metric,
            "method": method, "axes": self.axes.as_dict(),
            "objectives": {task.metric: "test split, " + ("max" if task.higher else "min"), "latency": task.latency,
                           "size": "file bytes, min"},
            "budget_seconds": self.budget, "variants_planned": n_planned, "variants_run": len(done),
            "stopped_by_budget": bool(self.skipped), "skipped": self.skipped,
            "frontier": [r["name"] for r in rows if r["frontier"]],
            "candidates": rows, "references": references, "measured_together": [m["name"] for m in models],
            "bench": recipe.bench.model_dump(), "cpu": cpu_info(), "eval_key": seen.key,
            "build_seconds": round(build_seconds, 2), "measure_seconds": round(measure_seconds, 2),
            "measurements_cached": not seen.stored, **measured_extra,
            "search_seconds": round(self.clock() - self.started, 2),
            "files": {k: str(search_dir / f"search.{k}") for k in ("json", "md", "png")},
            **(extra or {}),
        }
        search_dir.mkdir(parents=True, exist_ok=True)
        with claim_file(inside(search_dir, ".lock")):  # two searches finishing together write one set of files each
            write_json(search_dir / "search.json", result)
            write_text(search_dir / "search.md", markdown(result))
            plot(result, search_dir / "search.png")
            result["search_seconds"] = round(self.clock() - self.started, 2)
            write_json(search_dir / "search.json", result)  # again, with the time the files took
        if not self.quiet:
            print_table(result)
        return result


def search(recipe, output=None, *, ratios=None, modes=None, widths=None, method: str | None = None,
           budget: float | None = None, trials: int | None = None, quiet: bool = False,
           clock: Callable[[], float] = time.monotonic, storage: str | None = None, study: str | None = None,
           report: bool = False, heartbeat: int | None = None) -> dict:
    """Build every variant (grid) or ``trials`` of them (TPE), measure all together, write the frontier; returns
    the ``search.json`` content. ``budget`` (seconds of wall time, the final measurement included) stops launching
    variants whose estimated build and measurement would not fit.

    With ``storage`` (an optuna storage URL, see ``open_storage``) this process is one worker of the study
    ``study`` (default: the recipe's name): it builds what the study has not built yet, measures nothing together
    and returns its summary; ``budget`` bounds its building. ``report=True`` builds nothing: it measures the
    study's finished candidates together and writes the frontier.
    """
    started = clock()
    method = method or "grid"
    if method not in METHODS:
        raise SearchError(f"--method: unknown method {method!r}; valid choices: {', '.join(METHODS)}")
    if budget is not None and not budget > 0:
        raise SearchError(f"--budget: {budget} seconds; give a positive number of seconds")
    if trials is not None and method != "tpe":
        raise SearchError("--trials applies to --method tpe only; a grid runs every point")
    if storage is None:
        for given, flag in ((report, "--report"), (study is not None, "--study"), (heartbeat is not None, "--heartbeat")):
            if given:
                raise SearchError(f"{flag} applies to a search on an optuna storage; give --storage URL too "
                                  "(sqlite:///search.db, journal:///shared/search.log or postgresql://...)")
    if report and budget is not None:
        raise SearchError("--budget bounds what a worker builds; --report builds nothing (leave --budget out)")
    if heartbeat is not None and not heartbeat >= 1:
        raise SearchError(f"--heartbeat: {heartbeat} seconds; give a whole number of seconds >= 1")
    axes = parse_axes(recipe, ratios, modes, widths)
    # A missing optuna (named for --storage by open_storage) and a bad storage URL fail before any compute.
    store = open_storage(storage, heartbeat or HEARTBEAT) if storage is not None else None
    optuna = _optuna() if store is not None or method == "tpe" else None
    s = _Search(recipe, output, axes, budget=budget, quiet=quiet, clock=clock, started=started)
    queue, n_planned = s.plan(method, trials)
    if store is not None:
        return (_report if report else _work)(s, optuna, store, study or recipe.name, method, queue, n_planned)
    say(f"[bold]compress search[/bold] {recipe.name}: {method}, {n_planned} variant(s) planned over "
        f"ratios {', '.join(f'{r:g}' for r in axes.ratios)} x modes {', '.join(axes.modes)}"
        + (f" x widths {', '.join(str(w) for w in axes.widths)}" if len(axes.widths) > 1 else "")
        + (f", budget {budget:g} s" if budget else ""), quiet)
    s.run_one(s.base)
    if method == "grid":
        for c in queue[1:]:
            s.run_if_it_fits(c)
    else:
        _tpe(optuna, s, n_planned)
    return s.finish(method, n_planned, clock() - started)


def _distributions(axes: Axes, method: str) -> dict:
    """The search space as optuna distributions: TPE's ratio is continuous (steps of 0.01) between the smallest
    and the largest given; a grid's axes are categorical. An axis with one value is not a parameter for TPE."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    values = {"ratio": axes.ratios, "mode": axes.modes, "width": axes.widths}
    out = {k: CategoricalDistribution(list(v)) for k, v in values.items() if method == "grid" or len(v) > 1}
    if method == "tpe" and "ratio" in out:
        out["ratio"] = FloatDistribution(min(axes.ratios), max(axes.ratios), step=0.01)
    return out


def _suggest(trial, axes: Axes) -> Point:
    lo, hi = min(axes.ratios), max(axes.ratios)
    ratio = round(trial.suggest_float("ratio", lo, hi, step=0.01), 2) if hi > lo else lo
    mode = trial.suggest_categorical("mode", list(axes.modes)) if len(axes.modes) > 1 else axes.modes[0]
    width = trial.suggest_categorical("width", list(axes.widths)) if len(axes.widths) > 1 else axes.widths[0]
    return Point(ratio, mode, width)


def _in_space(distributions: dict, p: Point) -> dict:
    """``p``'s values that lie in the search space (the recipe's own point may lie outside it)."""
    out = {}
    for k, v in asdict(p).items():
        d = distributions.get(k)
        with contextlib.suppress(ValueError, TypeError):  # a value the distribution cannot even represent
            if d is not None and d._contains(d.to_internal_repr(v)):
                out[k] = v
    return out


def _tpe(optuna, s: _Search, trials: int) -> None:
    """Multi-objective TPE (optuna) over (the validation metric, probe latency, size): the sampler never sees
    the test split. The ratio is continuous between the smallest and largest given (steps of 0.01)."""
    sampler = optuna.samplers.TPESampler(seed=s.recipe.seed, n_startup_trials=min(5, trials))
    study = optuna.create_study(directions=_directions(s), sampler=sampler)
    seen = {s.base.point: s.base}
    study.enqueue_trial(_in_space(_distributions(s.axes, "tpe"), s.base.point))  # the first trial: the recipe's own point
    for _ in range(trials):
        trial = study.ask()
        p = _suggest(trial, s.axes)
        c = seen.get(p) or s.candidate(p)
        if not any(d is c for d in s.done) and not s.run_if_it_fits(c):
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            break
        seen[p] = c
        study.tell(trial, _values(s, c))


def _directions(s: _Search) -> list[str]:
    """The study's directions: the validation metric (accuracy up, bits/byte down), probe latency, file size."""
    return ["maximize" if s.task.higher else "minimize", "minimize", "minimize"]


def _values(s: _Search, c: _Candidate) -> list[float]:
    return [c.probe[f"val_{s.task.metric}"], c.probe["latency_ms"], float(Path(c.entry["path"]).stat().st_size)]


HEARTBEAT = 60  # seconds between a storage worker's heartbeats; a variant is given up after two missed


# --- a search on an optuna storage: workers, crash recovery, the report -----------------------------
#
# The study holds the queue and the record of the search; the output root (``<output>/.cache`` and the search
# folder, on a filesystem every worker shares) holds the files. A variant is built once:
#
# - the first worker to create the study queues every grid point (or, for TPE, the recipe's own point) as a
#   WAITING trial and then sets the study's ``plan``; creating a study of a taken name fails in every storage
#   (a unique column in a database, the first CREATE in a journal), so the queue is written once;
# - a worker claims a queued trial by moving it from WAITING to RUNNING, which succeeds for one worker only:
#   the journal applies operations in log order, PostgreSQL and MySQL lock the row (SELECT ... FOR UPDATE), and
#   for sqlite every transaction here starts with BEGIN IMMEDIATE (``_serialize_sqlite``);
# - the build itself runs under the variant folder's lock, after checking that no finished trial has built the
#   same model (same stage keys): TPE may suggest a point again, and a trial given up as crashed while its worker
#   was still alive comes back; both then reuse the finished result instead of building it twice.
#
# A worker records a heartbeat while it builds. A RUNNING trial without one for two heartbeat intervals is given
# up (FAIL) and queued again as a new WAITING trial (optuna's RetryHeartbeatStaleTrialCallback, at most
# ``RETRIES`` times): optuna's own heartbeat on RDB storages; a trial system attribute on the journal storage,
# which in optuna 5 has no heartbeat of its own.

RETRIES = 2  # a variant whose worker keeps dying (out of memory, say) is queued again at most this often
_BEAT = "compress:heartbeat"  # journal storage: unix time of the worker's last heartbeat (trial system attr)
_PLAN = "plan"  # study user attr: what the study searches (method, axes, trials, the recipe's stage keys)


@dataclass
class Store:
    """An optuna storage and how its trials are claimed, kept alive and recovered."""

    shown: str  # the URL without its password, for messages and search.json
    kind: str  # "sqlite", "rdb" or "journal"
    storage: object
    heartbeat: int

    @property
    def grace(self) -> int:
        return 2 * self.heartbeat

    def trial_id(self, study, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(
            self.storage.get_study_id_from_name(study.study_name), number)

    def _move(self, tid: int, state) -> bool:
        """Set trial ``tid``'s state; False when another worker moved it first (the storage refuses or raises)."""
        import optuna

        try:
            return self.storage.set_trial_state_values(tid, state)
        except optuna.exceptions.UpdateFinishedTrialError:
            return False

    def pop(self, study, number: int) -> int | None:
        """Claim queued trial ``number`` (WAITING -> RUNNING); its trial id, or None when another worker has it."""
        from optuna.trial import TrialState

        tid = self.trial_id(study, number)
        if self.kind != "journal":
            # optuna never gives up a RUNNING trial that has no heartbeat yet: beat first, so that a worker dying
            # right after its claim still leaves a trial that goes stale (a lost race beats another's trial once).
            self.beat(tid)
        return tid if self._move(tid, TrialState.RUNNING) else None

    def set_attrs(self, tid: int, attrs: dict) -> None:
        for k, v in attrs.items():
            self.storage.set_trial_user_attr(tid, k, v)

    def beat(self, tid: int) -> None:
        if self.kind == "journal":
            self.storage.set_trial_system_attr(tid, _BEAT, time.time())
        else:
            self.storage.record_heartbeat(tid)

    @contextlib.contextmanager
    def beating(self, tid: int):
        """A heartbeat every ``heartbeat`` seconds while the block runs (a thread: torch releases the GIL)."""
        import threading

        from compress._progress import warn

        self.beat(tid)
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self.heartbeat):
                try:
                    self.beat(tid)
                except Exception as exc:  # noqa: BLE001 - a storage hiccup: the next beat tries again
                    warn(f"search: heartbeat of trial id {tid} not recorded ({type(exc).__name__}: {exc})")

        thread = threading.Thread(target=loop, name="compress-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def give_up(self, study, tid: int) -> bool:
        """Fail trial ``tid`` and queue it again (a new WAITING trial with its parameters and attributes): a trial
        whose worker stopped beating, or this worker's when it stops (Ctrl-C) or cannot afford it. False when
        another worker gave it up first (the journal applies one FAIL) and so queued the retry."""
        from optuna.trial import TrialState

        if not self._move(tid, TrialState.FAIL):
            return False
        _retry_callback()(study, self.storage.get_trial(tid))
        return True

    def recover(self, study) -> list[int]:
        """Give up the RUNNING trials whose worker stopped beating, and queue them again; their numbers."""
        import optuna
        from optuna.trial import TrialState

        if self.kind != "journal":  # optuna's heartbeat (RDBStorage: heartbeat_interval, grace_period, callback)
            before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
            optuna.storages.fail_stale_trials(study)
            return sorted({t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))} - before)
        now, given_up = time.time(), []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            # The later of the last heartbeat and the claim: a retried trial carries its predecessor's old beat.
            last = max(t.system_attrs.get(_BEAT, 0.0), t.datetime_start.timestamp() if t.datetime_start else now)
            if now - last > self.grace and self.give_up(study, self.trial_id(study, t.number)):
                given_up.append(t.number)
        return given_up


def _retry_callback():
    """optuna's callback that queues a given-up trial again (renamed in optuna 4.9; the old name until then)."""
    import optuna

    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    return cls(max_retry=RETRIES)


def open_storage(url: str, heartbeat: int = HEARTBEAT) -> Store:
    """The optuna storage of ``--storage URL``: a sqlite file (one machine), optuna's journal file (machines sharing
    a filesystem) or any other SQLAlchemy URL (a cluster); the forms are in ``forms`` and docs/search.md."""
    optuna = _optuna("compress search --storage")
    forms = ("give sqlite:///search.db (one machine), journal:///shared/search.log (a filesystem the workers share) "
             "or a database URL such as postgresql://user@host/db")
    if url.startswith("journal:"):
        try:
            from optuna.storages.journal import JournalFileBackend, JournalStorage
        except ImportError:  # optuna < 4.0
            from optuna.storages import JournalFileStorage as JournalFileBackend, JournalStorage

        path = url.removeprefix("journal:").removeprefix("//")
        if not path or path.endswith("/"):
            raise SearchError(f"--storage {url}: no file named; {forms}")
        if not Path(path).parent.is_dir():
            raise SearchError(f"--storage {url}: folder {Path(path).parent} does not exist")
        return Store(url, "journal", JournalStorage(JournalFileBackend(path)), heartbeat)
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:  # not scheme://...
        raise SearchError(f"--storage {url}: not a storage URL; {forms}") from None
    shown = parsed.render_as_string(hide_password=True)
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and parsed.database in (None, "", ":memory:"):
        raise SearchError(f"--storage {shown}: an in-memory database is not shared; give a file, sqlite:///search.db")
    if sqlite and not Path(parsed.database).parent.is_dir():
        raise SearchError(f"--storage {shown}: folder {Path(parsed.database).parent} does not exist")
    import inspect

    named = ("heartbeat_stale_trial_callback"  # optuna >= 4.9; failed_trial_callback before
             if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
             else "failed_trial_callback")
    for attempt in range(5):
        try:
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else {},
                heartbeat_interval=heartbeat, grace_period=2 * heartbeat, **{named: _retry_callback()})
            break
        except ImportError as exc:
            raise SearchError(f"--storage {shown}: {exc} (install the database's driver, e.g. pip install "
                              "psycopg2-binary for postgresql://)") from None
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            # Two workers creating the tables of a new database at the same moment: one of them retries.
            if attempt == 4:
                raise CompressError(f"--storage {shown}: cannot open it ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0]})") from None
            time.sleep(0.3 * (attempt + 1))
    if sqlite:
        _serialize_sqlite(storage.engine)
    return Store(shown, "sqlite" if sqlite else "rdb", storage, heartbeat)


def _serialize_sqlite(engine) -> None:
    """Every transaction on this sqlite file starts with BEGIN IMMEDIATE (sqlite's write lock).

    optuna claims a queued trial by reading it (WAITING) and then writing RUNNING; pysqlite opens the
    transaction only at the write, so two processes can both read WAITING and both "win" (measured: two
    processes popping 200 queued trials claimed 19 of them twice). Taking the write lock first makes the read
    and the write one step (the recipe of SQLAlchemy's pysqlite documentation)."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, record) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners existed are closed; new ones get them


def _identity(c: _Candidate) -> dict:
    return {"variant": c.name, "key": c.key, "point": asdict(c.point), "recipe": c.is_recipe}


def _open_study(optuna, s: _Search, store: Store, name: str, method: str, n_planned: int, queue: list[_Candidate],
                sampler, *, create: bool):
    """The study ``name``: created with its queue when it does not exist (and ``create``), else loaded and its
    plan checked against this command's. Returns (study, whether this process created it)."""
    from optuna.trial import TrialState, create_trial

    plan = {"method": method, "axes": s.axes.as_dict(), "trials": n_planned if method == "tpe" else None,
            "recipe": s.recipe.name, "keys": list(s.base.keys)}
    if create:
        try:
            study = optuna.create_study(study_name=name, storage=store.storage, sampler=sampler,
                                        directions=_directions(s))
        except optuna.exceptions.DuplicatedStudyError:
            pass
        else:
            dists = _distributions(s.axes, method)
            for c in queue:
                params = _in_space(dists, c.point)
                study.add_trial(create_trial(state=TrialState.WAITING, params=params,
                                             distributions={k: dists[k] for k in params}, user_attrs=_identity(c)))
            study.set_user_attr(_PLAN, plan)  # last: the queue is complete
            return study, True
    try:
        study = optuna.load_study(study_name=name, storage=store.storage, sampler=sampler)
    except KeyError:
        raise CompressError(f"there is no study {name!r} in {store.shown}: start the workers first (the same "
                            "command without --report)") from None
    deadline = time.monotonic() + 120
    while _PLAN not in study.user_attrs:  # its creator is writing the queue
        if time.monotonic() > deadline:
            raise CompressError(f"study {name!r} in {store.shown} has no plan: the worker that created it stopped "
                                f"before queueing its variants; delete it (optuna delete-study --study-name {name} "
                                f"--storage URL) or pass another --study")
        time.sleep(0.5)
    got = study.user_attrs[_PLAN]
    diff = [k for k in ("method", "axes", "trials", "keys") if got.get(k) != plan[k]]
    if diff:
        what = {"method": "method", "axes": "axes", "trials": "--trials", "keys": "recipe (its stage cache keys)"}
        a = got.get("axes", {})
        raise SearchError(f"study {name!r} in {store.shown} searches something else ({', '.join(what[k] for k in diff)} "
                          f"differ: it is a {got.get('method')} search of {got.get('recipe')!r} over ratios "
                          f"{a.get('ratios')}, modes {a.get('modes')}, widths {a.get('widths')}); run the command "
                          "its workers run, or pass --study NAME for a new study")
    return study, False


def _from_trial(s: _Search, attrs: dict, number: int) -> _Candidate:
    c = s.base if attrs.get("recipe") else s.candidate(Point(**attrs["point"]))
    if attrs.get("key") not in (None, c.key):
        raise CompressError(f"trial {number} was queued for a different model of variant {attrs.get('variant')!r} "
                            "(other cache keys: another compress or torch version?); run every worker and the "
                            "report with the same versions")
    return c


def _finished(study, key: str):
    """The first finished trial that built the model ``key``, or None."""
    from optuna.trial import TrialState

    return next((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if t.user_attrs.get("key") == key and t.user_attrs.get("built")), None)


def _tell(optuna, study, store: Store, tid: int, number: int, values, attrs: dict) -> None:
    """Record ``attrs`` and ``values`` on the trial and finish it. A trial given up as crashed while its worker was
    still building (a heartbeat missed) cannot be told: the result is added as a finished trial of its own, and the
    retry queued meanwhile finds it and builds nothing."""
    from optuna.trial import TrialState, create_trial

    try:
        store.set_attrs(tid, attrs)
        study.tell(number, values)
        return
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError):
        frozen = store.storage.get_trial(tid)
        if frozen.state == TrialState.RUNNING:
            raise
    study.add_trial(create_trial(params=frozen.params, distributions=frozen.distributions, values=values,
                                 user_attrs={**frozen.user_attrs, **attrs, "late": number}))


def _recorded(s: _Search, m: dict, **more) -> dict:
    """A built file as a trial records it: its path relative to the search folder (the workers may see the output
    root at other paths) and its digest, which the report checks."""
    from compress.cache import sha256_file

    keep = ("name", "role", "params", "macs", "key", "lineage")
    return {**{k: m.get(k) for k in keep}, "path": str(Path(m["path"]).relative_to(s.search_dir)), **more,
            "sha256": sha256_file(m["path"])}


def _built_attrs(s: _Search, c: _Candidate, me: str) -> dict:
    attrs = {**_identity(c), "worker": me, "built": True, "entry": _recorded(s, c.entry), "keys": list(c.keys),
             "stages": c.stages, "seconds": round(c.seconds, 2), "probe": c.probe}
    if c.is_recipe:
        attrs["refs"] = [_recorded(s, r, probe=r["probe"]) for r in s.refs]
    return attrs


def _run_trial(optuna, s: _Search, study, store: Store, tid: int, number: int, c: _Candidate, me: str) -> str:
    """Build ``c`` for trial ``number`` (claimed by this worker) and finish the trial: "built", or "reused" when a
    finished trial already built the same model."""
    with store.beating(tid):
        store.set_attrs(tid, {**_identity(c), "worker": me})
        with s.lock(c):
            done = _finished(study, c.key)
            if done is not None:
                say(f"[dim]{c.name}: built by trial {done.number} ({done.user_attrs.get('worker')}); reused[/dim]", s.quiet)
                _tell(optuna, study, store, tid, number, done.values, {"same_as": done.number})
                return "reused"
            try:
                s.build(c)
            except KeyboardInterrupt:
                store.give_up(study, tid)
                raise
            except BaseException as exc:
                import traceback

                from optuna.trial import TrialState

                # Another worker may have given the trial up meanwhile (a missed heartbeat): the build's own
                # error is still the one raised, not the storage's refusal to update a finished trial.
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    store.set_attrs(tid, {"error": "".join(traceback.format_exception_only(exc)).strip()[-2000:]})
                    store.storage.set_trial_state_values(tid, TrialState.FAIL)
                raise
            c.worker, c.trial = me, number
            _tell(optuna, study, store, tid, number, _values(s, c), _built_attrs(s, c, me))
            return "built"


def _work(s: _Search, optuna, store: Store, name: str, method: str, queue: list[_Candidate], n_planned: int) -> dict:
    """One worker: claim queued variants (and, for TPE, sample new ones) until the study has built everything,
    this worker's budget is spent, or nothing is left that it could afford. Measures nothing together."""
    import os
    import socket

    from optuna.trial import TrialState

    sampler = (optuna.samplers.TPESampler(n_startup_trials=min(5, n_planned), constant_liar=True)
               if method == "tpe" else optuna.samplers.RandomSampler())
    study, created = _open_study(optuna, s, store, name, method, n_planned, queue, sampler, create=True)
    me = f"{socket.gethostname()}:{os.getpid()}"
    say(f"[bold]compress search[/bold] worker {me}: {method} study {name!r} in {store.shown} "
        + (f"(created; {len(queue)} variant(s) queued)" if created else "(joined)")
        + (f", budget {s.budget:g} s" if s.budget else ""), s.quiet)
    built, reused, recovered = [], [], []
    poll = min(2.0, store.heartbeat / 2)
    while True:
        recovered += store.recover(study)
        now = study.get_trials(deepcopy=False)
        job, unaffordable = None, []
        for t in sorted((t for t in now if t.state == TrialState.WAITING), key=lambda t: t.number):
            c = _from_trial(s, t.user_attrs, t.number)
            ok, est = (True, None) if c.is_recipe else s.fits(c, session=False)  # the recipe's own always runs
            if not ok:
                unaffordable.append(s.skip(c, est))
                continue
            tid = store.pop(study, t.number)
            if tid is not None:
                job = (tid, t.number, c)
                break
        active = sum(t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING) for t in now)
        if job is None and method == "tpe" and not unaffordable and active < n_planned:
            trial = study.ask()
            tid = store.trial_id(study, trial.number)
            store.beat(tid)  # at once: a RUNNING trial without a beat is never given up
            point = trial.user_attrs.get("point")  # a trial queued meanwhile (a retry) keeps its own variant
            c = _from_trial(s, trial.user_attrs, trial.number) if point else s.candidate(_suggest(trial, s.axes))
            ok, est = s.fits(c, session=False)
            if ok:
                job = (tid, trial.number, c)
            else:
                unaffordable.append(s.skip(c, est))
                if point:  # a queued variant this worker cannot afford: back to the queue for another
                    store.give_up(study, tid)
                else:
                    store.set_attrs(tid, {**_identity(c), "worker": me, "skipped": "budget"})
                    study.tell(trial, state=TrialState.PRUNED)
        if job is not None:
            tid, number, c = job
            (built if _run_trial(optuna, s, study, store, tid, number, c, me) == "built" else reused).append(c.name)
            continue
        if unaffordable:  # nothing left that this worker's budget affords; other workers may take it
            s.skipped = unaffordable
            break
        if not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in now):
            break  # the study is complete
        if s.budget is not None and s.clock() - s.started >= s.budget:
            break
        time.sleep(poll)  # other workers are building: one that crashes comes back to the queue here
    counts = _counts(study.get_trials(deepcopy=False))
    summary = {"worker": me, "study": name, "storage": store.shown, "method": method, "created": created,
               "built": built, "reused": reused, "skipped": s.skipped, "recovered": recovered,
               "trials": counts, "variants_planned": n_planned,
               "seconds": round(s.clock() - s.started, 2)}
    if not s.quiet:
        print(f"worker {me}: built {len(built)} variant(s)" + (f" ({', '.join(built)})" if built else "")
              + (f", reused {len(reused)}" if reused else "")
              + (f", left {len(s.skipped)} it could not afford" if s.skipped else "")
              + (f", queued again {len(recovered)} of crashed workers" if recovered else "")
              + f" in {summary['seconds']:.0f} s; study {name!r}: "
              + ", ".join(f"{n} {k}" for k, n in counts.items()) + " trial(s)")
        print("the frontier: the same command with --report once every worker has finished")
    return summary


def _report(s: _Search, optuna, store: Store, name: str, method: str, queue: list[_Candidate], n_planned: int) -> dict:
    """Measure the study's built candidates, the teacher and the scratch student in one interleaved session on
    this machine and write the frontier, as a one-process search does at its end. Refuses while a worker is
    building (its load would distort the timings); a candidate whose file changed since its worker recorded it
    is built again from the cache."""
    from optuna.trial import TrialState

    study, _ = _open_study(optuna, s, store, name, method, n_planned, queue, optuna.samplers.RandomSampler(),
                           create=False)
    given_up = store.recover(study)
    now = study.get_trials(deepcopy=False)
    running = [t for t in now if t.state == TrialState.RUNNING]
    if running:
        raise CompressError(
            f"study {name!r}: {len(running)} variant(s) are being built ("
            + ", ".join(f"{t.user_attrs.get('variant')} by {t.user_attrs.get('worker')}" for t in running)
            + "); --report times every candidate in one session while no worker runs: run it once they have finished "
            f"(a crashed worker's variant is given up after {store.grace} s without a heartbeat)")
    built = sorted((t for t in now if t.state == TrialState.COMPLETE and t.user_attrs.get("built")),
                   key=lambda t: t.number)
    first = {t.user_attrs["key"]: t for t in reversed(built)}  # the first trial that built each model
    if not any(t.user_attrs.get("recipe") for t in first.values()):
        raise CompressError(f"study {name!r}: the recipe's own variant has not been built yet; start a worker "
                            "(the same command without --report)")
    order = {c.key: i for i, c in enumerate(queue)}
    trials_in_order = sorted(first.values(), key=lambda t: (not t.user_attrs.get("recipe"),
                                                            order.get(t.user_attrs["key"], len(order)), t.number))
    rebuilt = []
    for t in trials_in_order:
        a = t.user_attrs
        c = _from_trial(s, a, t.number)
        files = [_local(s, f) for f in [a["entry"], *(a.get("refs") or [])]]
        # A file missing or changed since the worker recorded it: built again (its stages are cached).
        if None in files:
            say(f"[yellow]{c.name}: its files changed since trial {t.number} recorded them; building it again "
                "from the cache[/yellow]", s.quiet)
            s.run_one(c)
            rebuilt.append(c.name)
        else:
            c.entry, c.probe, c.stages = files[0], a["probe"], a["stages"]
            if c.is_recipe:
                s.refs = files[1:]
            s.known[tuple(c.keys)] = c
            s.done.append(c)
        c.worker, c.trial = a.get("worker"), t.number
        c.seconds = a["seconds"]

    def not_built(t, why: str) -> dict:
        return {**t.user_attrs.get("point", {}), "name": t.user_attrs.get("variant"), "estimated_seconds": None,
                "why": why}

    s.skipped = ([not_built(t, "budget") for t in now if t.state == TrialState.PRUNED and t.user_attrs.get("skipped")]
                 + [not_built(t, "not built yet (queued)") for t in now if t.state == TrialState.WAITING])
    retried = {n for t in now for n in t.system_attrs.get("retry_history", [])}
    failed = [{"name": t.user_attrs.get("variant"), "trial": t.number, "worker": t.user_attrs.get("worker"),
               "error": t.user_attrs.get("error") or ("the worker stopped (no heartbeat); " + (
                   "queued again" if t.number in retried else f"not queued again (tried {RETRIES + 1} times)"))}
              for t in now if t.state == TrialState.FAIL]
    workers: dict[str, dict] = {}
    for c in s.done:
        w = workers.setdefault(c.worker or "this process", {"built": [], "seconds": 0.0})
        w["built"].append(c.name)
        w["seconds"] = round(w["seconds"] + c.seconds, 2)
    starts = [t.datetime_start for t in first.values() if t.datetime_start]
    ends = [t.datetime_complete for t in first.values() if t.datetime_complete]
    extra = {"stopped_by_budget": any(x["why"] == "budget" for x in s.skipped),
             "study": {"name": name, "storage": store.shown, "workers": workers, "failed": failed,
                       "queued_again": given_up, "rebuilt": rebuilt, "built_once": len(first) == len(built),
                       "wall_seconds": round((max(ends) - min(starts)).total_seconds(), 2) if starts and ends else None,
                       "trials": _counts(now)}}
    return s.finish(method, n_planned, sum(c.seconds for c in s.done), extra)


def _counts(trials) -> dict[str, int]:
    """How many trials are in each state (``{"complete": 4, "fail": 1}``), the states with none left out."""
    from optuna.trial import TrialState

    return {st.name.lower(): n for st in TrialState if (n := sum(t.state == st for t in trials))}


def _local(s: _Search, f: dict) -> dict | None:
    """A file a worker recorded (``_recorded``) as this machine sees it, its path under the search folder; None when
    it is outside that folder, missing or not the bytes the worker recorded."""
    from compress._io import inside
    from compress.cache import sha256_file
    from compress.errors import UnsafePathError

    try:
        path = inside(s.search_dir, f["path"])
    except UnsafePathError:
        return None
    if not path.is_file() or path.is_symlink() or sha256_file(path) != f.get("sha256"):
        return None
    return {**{k: v for k, v in f.items() if k != "sha256"}, "path": path}


# --- output ----------------------------------------------------------------------------------------


_LEFT = ("candidate", "mode", "note")  # the table's text columns; the others are numbers, right-aligned


def _header(result: dict) -> list[str]:
    """The table's columns: the task's quality and latency columns (``test bpb``, ``p50/token (us)`` for an LM)."""
    return ["candidate", "ratio", "mode", "width", "frontier", *_task(result).columns, "p50 batch (ms)", "size",
            "params", "stages cached", "note"]


def _rows(result: dict) -> list[list[str]]:
    """The table's rows: the candidates, the frontier first and the best first, then the references."""
    from compress.report import size_text

    task = _task(result)
    metric = task.metric

    def numbers(r: dict) -> list[str]:
        batch = r.get("latency_batch_ms")
        return [format(r[metric], task.number), format(r[f"val_{metric}"], task.number),
                f"{r['latency_ms']['p50'] * 1e3:.1f}", "-" if batch is None else f"{batch['p50']:.3f}",
                size_text(r["size_bytes"]), f"{r['params']:,}" if r["params"] else "-"]

    rows = []
    for r in sorted(result["candidates"], key=lambda r: (not r["frontier"], -r[metric] if task.higher else r[metric],
                                                         r["latency_ms"]["p50"])):
        note = "; ".join(n for n in ("AT CHANCE" if r.get("at_chance") else "",
                                     "the recipe's own" if r["recipe"] else "",
                                     f"same file as {r['same_as']}" if r.get("same_as") else "",
                                     f"dominated by {r['dominated_by']}" if r["dominated_by"] else "") if n)
        cached = sum(s["cached"] for s in r["stages"])
        rows.append([r["name"], f"{r['ratio']:g}", r["mode"], "-" if r["width"] is None else str(r["width"]),
                     "yes" if r["frontier"] else "", *numbers(r), f"{cached}/{len(r['stages'])}", note])
    for r in result["references"]:
        rows.append([r["name"], "", "", "", "", *numbers(r), "",
                     "reference; AT CHANCE: not a baseline to beat" if r.get("at_chance") else "reference"])
    return rows


def _summary(result: dict) -> list[str]:
    study = result.get("study")
    lines = [f"{result['method']} search: {result['variants_run']} of {result['variants_planned']} planned variant(s) "
             f"built in {result['build_seconds']:.1f} s" + (" of worker time" if study else "") + ", "
             + ("measurements reused from the cache (the same models, settings and CPU); "
                if result.get("measurements_cached") else
                f"measured together in {result['measure_seconds']:.1f} s; ")
             + f"{len(result['frontier'])} on the Pareto frontier; {result['search_seconds']:.1f} s in all"
             + (" (this report)." if study else ".")]
    if study:
        workers = study["workers"]
        lines.append(f"Study {study['name']!r} in {study['storage']}: built by {len(workers)} worker(s) ("
                     + "; ".join(f"{w}: {', '.join(v['built'])}" for w, v in workers.items()) + ")"
                     + (", each variant once" if study["built_once"] else ", SOME VARIANT MORE THAN ONCE")
                     + (f", {study['wall_seconds']:.0f} s from the first build's start to the last one's end"
                        if study.get("wall_seconds") is not None else "") + ".")
        if study["failed"]:
            lines.append("Trials that failed or were given up: " + "; ".join(f"{f['name']} (trial {f['trial']}, {f['worker']}): "
                                                       f"{f['error'].splitlines()[-1]}" for f in study["failed"]) + ".")
        if study["rebuilt"]:
            lines.append(f"Built again from the cache, their files having changed since their workers recorded them: "
                         f"{', '.join(study['rebuilt'])}.")
        queued = [s["name"] for s in result["skipped"] if s.get("why", "budget") != "budget"]
        if queued:
            lines.append(f"Not built yet (still queued; start a worker, then report again): {', '.join(queued)}.")
    same = [r for r in result["candidates"] if r.get("same_as")]
    if same:
        lines.append(f"{len(same)} candidate(s) gave a file byte-identical to another's (e.g. two ratios that round to "
                     "the same channel counts): measured once, listed under each name.")
    by_budget = [s["name"] for s in result["skipped"] if s.get("why") == "budget"]
    if study and by_budget:
        lines.append(f"Left out by the workers' budgets: {', '.join(by_budget)}.")
    if result["budget_seconds"]:
        if result["stopped_by_budget"]:
            lines.append(f"The budget of {result['budget_seconds']:g} s left out {len(result['skipped'])} variant(s) "
                         f"whose estimated build and measurement would not fit: "
                         + ", ".join(s["name"] for s in result["skipped"]) + ".")
        else:
            lines.append(f"Every planned variant fitted in the budget of {result['budget_seconds']:g} s.")
    return lines + _task(result).notes(result)


def markdown(result: dict) -> str:
    from compress.report import md_table

    task = _task(result)
    out = [f"# compress search: {result['name']}", ""]
    out += [f"- {line}" for line in _summary(result)]
    a = result["axes"]
    out += [f"- Axes: ratios {', '.join(f'{r:g}' for r in a['ratios'])}; modes {', '.join(a['modes'])}; widths "
            f"{', '.join('-' if w is None else str(w) for w in a['widths'])}. Ratio 0 = no prune stage; "
            "fp32 = no quantize stage.",
            f"- CPU: {result['cpu'].get('model') or result['cpu'].get('machine')}", "",
            md_table(_header(result), [[c or " " for c in row] for row in _rows(result)], left=_LEFT)]
    if result["skipped"]:
        out += ["", "Not built:" if result.get("study") else "Not built (budget):", ""]
        out += [f"- {s['name']}" + (f" (estimated {s['estimated_seconds']:.1f} s)" if s["estimated_seconds"] else "")
                + (f": {s['why']}" if s.get("why") else "") for s in result["skipped"]]
    out += ["", f"![{task.quality} vs latency]({Path(result['files']['png']).name})", ""]
    return "\n".join(out)


def plot(result: dict, path: Path) -> None:
    """Test quality (accuracy, or an LM's bits/byte) vs p50 latency (batch 1, or per decoded token), marker area =
    file size, the frontier connected; the teacher, the scratch student and the recipe's own result marked."""
    from compress._plot import ROLE_COLORS, figure, finish

    task = _task(result)

    def xy(m: dict) -> tuple[float, float]:
        return m["latency_ms"]["p50"] * 1e3, m[task.metric] * task.plot_scale

    # Areas scale with the candidates' sizes (a teacher 50x bigger would shrink them all to dots); a
    # larger reference is drawn at the largest area.
    biggest = max(m["size_bytes"] for m in result["candidates"])
    area = lambda m: 30 + 600 * min(m["size_bytes"] / biggest, 1.5)  # noqa: E731
    fig, ax = figure()
    labels = []
    for m in result["candidates"]:
        x, y = xy(m)
        ax.scatter([x], [y], s=area(m), c="#2ca02c" if m["frontier"] else "#1f77b4", alpha=0.55,
                   edgecolors="black", linewidths=1.8 if m["recipe"] else 0.5, zorder=3)
        labels.append((x, y, m["name"] + (" (recipe)" if m["recipe"] else ""), "black"))
    # The line: the quality-latency frontier (a staircase); the green points: the frontier with size counted too.
    two = [objectives({**m, "size_bytes": 0}, task._metric) for m in result["candidates"]]
    front = sorted((m for m, on in zip(result["candidates"], pareto(two)) if on), key=lambda m: m["latency_ms"]["p50"])
    if front:
        ax.step(*zip(*map(xy, front)), where="post", color="#2ca02c", lw=1.2, zorder=2,
                label=f"{task.quality}-latency frontier")
    marks = {"teacher": ("*", ROLE_COLORS["teacher"]), "scratch": ("s", ROLE_COLORS["scratch"])}
    for m in result["references"]:
        mk, col = marks.get(m["role"], ("o", "black"))
        x, y = xy(m)
        ax.scatter([x], [y], s=area(m), marker=mk, c=col, alpha=0.7, edgecolors="black", linewidths=0.5, zorder=3)
        labels.append((x, y, m["name"], col))
    ax.scatter([], [], c="#2ca02c", alpha=0.55, label=f"frontier ({task.quality}, latency, size)")
    ax.scatter([], [], c="#1f77b4", alpha=0.55, label="dominated")
    ax.scatter([], [], facecolors="none", edgecolors="black", linewidths=1.8, label="the recipe's own")
    for role, (mk, col) in marks.items():
        if any(m["role"] == role for m in result["references"]):
            ax.scatter([], [], marker=mk, c=col, label=role)
    finish(fig, ax, path, labels, width=120, step=12, offset=7, fontsize=7, xlabel=task.xlabel, ylabel=task.ylabel,
           title=f"{result['name']}: {result['variants_run']} candidates, {len(result['frontier'])} on the frontier "
           "(marker area = file size)")


def print_table(result: dict) -> None:
    from compress.report import console, rich_table

    out = console(180)
    out.print(rich_table(f"compress search: {result['name']} (test split; latency interleaved in one session)",
                         _header(result), _rows(result), left=_LEFT, no_wrap=("candidate", "mode"),
                         style=lambda row: "bold green" if row[4] == "yes" else None))
    for line in _summary(result)[:2]:
        out.print(line)
    out.print(f"search: {result['files']['md']}")
