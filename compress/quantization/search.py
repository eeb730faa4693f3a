"""What: score quantized files on the validation split, rank layers by sensitivity, choose plans and files.

Every decision is taken on the validation split against the fp32 source file; the test split is left
to the final evaluation. Scores are read off the quantized files themselves, run by onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from compress.quantization.backend import Layer
from compress.runtimes.onnxruntime import load

__all__ = ["Score", "ValScorer", "Candidate", "choose", "EPS", "Yardstick", "ACCURACY",
           "accuracy_aware"]

EPS = 1e-9  # drops are multiples of 1/len(val); compare them to the budget without float noise


@dataclass(frozen=True)
class Score:
    accuracy: float  # on the validation split
    drop: float  # fp32 source's accuracy minus this one (negative: better than the source)
    logit_error: float  # mean squared logit difference to the source, relative to the source's mean square

    def within(self, budget: float) -> bool:
        return self.drop <= budget + EPS


class ValScorer:
    """Accuracy and logit error of ONNX files on the validation split, relative to the fp32 ``ref`` file."""

    def __init__(self, ref: Path, x: np.ndarray, y: np.ndarray):
        self.x, self.y = np.ascontiguousarray(x, dtype=np.float32), np.asarray(y)
        self.ref_logits = load(ref, threads=1).predict(self.x)
        self.ref_accuracy = float((self.ref_logits.argmax(1) == self.y).mean())
        self._scale = float(np.mean(self.ref_logits ** 2)) or 1.0
        self.calls = 0

    def __call__(self, path: Path) -> Score:
        self.calls += 1
        z = load(path, threads=1).predict(self.x)
        acc = float((z.argmax(1) == self.y).mean())
        return Score(acc, self.ref_accuracy - acc, float(np.mean((z - self.ref_logits) ** 2)) / self._scale)


@dataclass
class Trial:
    fp32: tuple[str, ...]  # layers kept fp32
    path: Path
    score: Score


@dataclass(frozen=True)
class Yardstick:
    """How a task's validation score reads in notes, tables and info keys: its value and how much a file loses."""

    name: str  # "val acc", "val bits/byte"
    value: Callable[[object], float]  # score -> its value
    fmt: Callable[[float], str]  # a value
    delta: Callable[[float], str]  # a drop (or increase) and the budget
    loss: str  # what a file loses: "drop", "increase"
    keys: tuple[str, str]  # info keys of the shipped file's value and loss


ACCURACY = Yardstick("val acc", lambda s: s.accuracy, "{:.2%}".format, "{:+.2%}".format, "drop", ("val_accuracy", "val_drop"))


def accuracy_aware(layers: list[Layer], build_only, build_excl, scorer, budget: float, wd: Path, tag: str, what: str,
                   ys: Yardstick = ACCURACY, kept_as: str = "fp32") -> tuple[Path, dict]:
    """All layers quantized if that is within ``budget``; else each layer's sensitivity (quantized alone) and the
    greedy plan that keeps the most sensitive ones out of the mode (``kept_as``: fp32, or INT8 inside an INT4 file)
    until it is. Returns the chosen file and the report's info (notes, the two tables, ``<kept_as>_layers``)."""
    first = build_excl([], Path(wd) / f"{tag}_all.onnx")
    s0 = scorer(first)
    kept_key, b = f"{kept_as.lower()}_layers", ys.delta(budget).lstrip("+")
    info: dict = {"notes": [], "tables": []}
    if s0.within(budget) or not layers:
        why = (f"within the budget of {b}; no layer needs to stay {kept_as}." if s0.within(budget) else
               f"above the budget of {b}, and the file has no weighted layer to keep {kept_as}.")
        info["notes"].append(f"All {len(layers)} layers {what}: validation {ys.name} {ys.fmt(ys.value(s0))}, {ys.loss} "
                             f"{ys.delta(s0.drop)} against the fp32 source, {why}")
        info.update({kept_key: [], "budget_met": s0.within(budget), ys.keys[0]: ys.value(s0), ys.keys[1]: s0.drop})
        return first, info
    # each layer quantized alone (every other layer fp32): its own damage, free of interactions
    sens = {layer.name: scorer(build_only(layer, Path(wd) / f"sens_{tag}_{i}.onnx")) for i, layer in enumerate(layers)}
    # accuracy drop first; the logit error (continuous) orders layers whose drops tie, as they often do
    order = sorted(layers, key=lambda layer: (-sens[layer.name].drop, -sens[layer.name].logit_error))
    # greedy: layers kept out of the mode, most sensitive first, until the drop is within the budget; at least one
    # stays quantized (all fp32 is the source file itself); when no step meets the budget, the trial with the
    # smallest drop (then the fewest layers kept out) is chosen
    trials = []
    for step in range(len(order)):
        fp32 = tuple(layer.name for layer in order[:step])
        path = build_excl(list(fp32), Path(wd) / f"greedy_{tag}_{step}.onnx")
        trials.append(Trial(fp32, path, scorer(path)))
        if trials[-1].score.within(budget):
            break
    met = trials[-1].score.within(budget)
    chosen = trials[-1] if met else min(trials, key=lambda t: (t.score.drop, len(t.fp32)))
    kept, s = list(chosen.fp32), chosen.score
    rank = {layer.name: i + 1 for i, layer in enumerate(order)}
    info["tables"] += [
        {"title": f"Per-layer sensitivity on validation ({what}, each layer quantized alone)",
         "columns": ["layer", "op", "weights", ys.name, f"{ys.loss} vs fp32", "logit error", "sensitivity rank", "decision"],
         "rows": [[layer.name, layer.op, f"{layer.weights:,}", ys.fmt(ys.value(sens[layer.name])),
                   ys.delta(sens[layer.name].drop), f"{sens[layer.name].logit_error:.2e}", rank[layer.name],
                   f"kept {kept_as}" if layer.name in kept else what] for layer in layers]},
        {"title": "Greedy steps (validation)",
         "columns": [f"layers {kept_as}", "added", ys.name, ys.loss, "within budget", ""],
         "rows": [[len(t.fp32), t.fp32[-1] if t.fp32 else "(none: all quantized)", ys.fmt(ys.value(t.score)),
                   ys.delta(t.score.drop), "yes" if t.score.within(budget) else "no",
                   "chosen" if t is chosen else ""] for t in trials]}]
    info.update({kept_key: kept, "budget_met": met, ys.keys[0]: ys.value(s), ys.keys[1]: s.drop})
    if met:
        info["notes"].append(f"All layers {what}: {ys.loss} {ys.delta(s0.drop)} on validation (budget {b}); "
                             f"keeping the {len(kept)} most sensitive layer(s) {kept_as} ({', '.join(kept)}) brings it to "
                             f"{ys.delta(s.drop)}. Sensitivity: each layer quantized alone, ranked by its validation "
                             f"{ys.loss}, then by its logit error.")
    else:
        info["notes"].append(f"No plan met the budget of {b}: all layers {what} gave a {ys.loss} of "
                             f"{ys.delta(s0.drop)}, and keeping up to {len(layers) - 1} of {len(layers)} layers {kept_as} "
                             f"did not bring it within the budget. Kept the best file found ({len(kept)} layer(s) "
                             f"{kept_as}, {ys.loss} {ys.delta(s.drop)}); see the sensitivity table.")
    return chosen.path, info


@dataclass
class Candidate:
    name: str
    path: Path | None  # None: could not be made (``error`` says why)
    score: Score | None = None
    timing: dict | None = None  # Timing.as_dict() at batch 1, one thread
    size_bytes: int | None = None
    error: str = ""
    eligible: bool = True  # False: shown for reference only
    verdict: str = ""


def choose(cands: list[Candidate], budget: float, tie: float = 0.03,
           fmt: Callable[[float], str] = "{:.2%}".format) -> tuple[Candidate, bool]:
    """The fastest candidate (p50) within the budget on ``score.drop``; sets every candidate's verdict.

    Candidates within ``tie`` (3 %) of the fastest p50 are a tie, which the more accurate one (smaller drop)
    wins, then the smaller file: a 1 % speed-up is inside the noise of a shared machine, an accuracy loss is
    not. Returns ``(winner, met)``; when none meets the budget the winner is the most accurate candidate.
    ``fmt`` writes a drop and the budget in the verdicts (a percentage for accuracy; bits/byte for the LM).
    """
    ok = [c for c in cands if c.path is not None and c.eligible and c.timing]
    within = [c for c in ok if c.score.within(budget)]
    if within:
        fastest = min(c.timing["p50"] for c in within)
        tied = [c for c in within if c.timing["p50"] <= fastest * (1 + tie)]
        winner = min(tied, key=lambda c: (c.score.drop, c.size_bytes))
    else:
        winner = min(ok, key=lambda c: (c.score.drop, c.timing["p50"]))
    for c in cands:
        if c is winner:
            c.verdict = "winner" if within else "kept: the most accurate, though above the budget"
        elif c.path is None:
            c.verdict = f"not made: {c.error}"
        elif not c.eligible:
            c.verdict = "reference only"
        elif not c.score.within(budget):
            c.verdict = f"misses the budget (drop {fmt(c.score.drop)} > {fmt(budget)})"
        elif c.timing["p50"] <= winner.timing["p50"] * (1 + tie):
            why = "less accurate" if c.score.drop > winner.score.drop else "larger file"
            c.verdict = f"tied on speed (within {tie:.0%}), {why}"
        else:
            c.verdict = f"slower ({c.timing['p50'] / winner.timing['p50']:.2f}x the winner's p50)"
    return winner, bool(within)


def candidate_rows(cands: list[Candidate], ref: Candidate | None = None) -> list[list[str]]:
    """Table rows: name, val accuracy, drop, p50/p90 (us), speed vs fp32, size, verdict."""
    base = ref.timing["p50"] if ref is not None and ref.timing else None
    rows = []
    for c in cands:
        if c.path is None or not c.timing:
            rows.append([c.name, "-", "-", "-", "-", "-", c.verdict])
            continue
        t = c.timing
        rows.append([c.name, f"{c.score.accuracy:.2%}", f"{c.score.drop:+.2%}",
                     f"{t['p50'] * 1e3:.0f} / {t['p90'] * 1e3:.0f}",
                     f"{base / t['p50']:.2f}x" if base else "-", f"{c.size_bytes / 1024:.1f} kB", c.verdict])
    return rows


CANDIDATE_COLUMNS = ["candidate", "val acc", "drop vs fp32", "p50 / p90 (us, batch 1, 1 thread)",
                     "speed vs fp32", "size", "verdict"]
