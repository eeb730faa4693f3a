"""Does distillation beat the scratch student at equal budget, and what does it take?

    python benchmarks/distill_budget.py [--recipe recipes/mnist1d.yaml] [--seeds 0 1 2]
                                        [--questions budget lr temperature augment rule final]

Every comparison is paired and at equal budget: for each seed (the data split, the initialisation, the
batch order) the scratch student (hard labels) and the distilled student (Hinton KD from the recipe's
teacher) start from the same initialisation, see the same batches in the same order with the same
augmentation draws, and get the same epochs, learning rate, schedule and best-epoch rule. Test errors are
summed over the seeds; weights are chosen on val, test is only measured.

Questions (each a table):
  budget       epochs 30 / 60 / 120 at the recipe's learning rate (cosine schedule)
  lr           learning rate 1e-3 .. 3e-2 at 60 epochs, and a constant schedule
  temperature  Hinton temperature x alpha at the stage's default budget (KD only; scratch for reference)
  augment      random shifts (zero fill) and noise, the teacher run on each augmented batch; and the same
               shifts with the teacher's logits cached per (unaugmented) sample, which is what the cache
               would give
  rule         how the kept epoch is chosen: best val accuracy (ties: val loss; the stages' rule), best
               val loss, the last epoch, early stopping (patience 10 / 20) -- read off the budget and lr
               runs, whose every epoch is scored
  final        the shipped code: the recipe's first distill stage (its keys, the rest default) against
               the scratch baseline ``compress run`` trains for it (compress/pipeline.py scratch_budget)

The loop of the first five questions is ``compress.training.fit`` with two knobs it does not have (a
constant schedule; the test split scored at every epoch, for the rule table): Adam, batches of 64,
BatchNorm statistics refreshed before validation (compress/bn.py). The teacher is the recipe's, from the
cache ``compress run`` fills (``<output>/.cache``, same key). Writes every run to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import yaml

QUESTIONS = ("budget", "lr", "temperature", "augment", "rule", "final")


def configs(question: str, lr: float, epochs: int, shift: int = 4) -> list[tuple[str, dict, bool]]:
    """(label, run keys, scratch too?) for one question; ``lr``/``epochs``: the recipe's (or the defaults);
    ``shift``: a tenth of the input's smallest axis (4 samples of MNIST-1D's 40, 1 pixel of digits' 8)."""
    if question == "budget":
        return [(f"{e} epochs, lr {lr:g}, cosine", {"epochs": e, "lr": lr}, True) for e in (30, 60, 120)]
    if question == "lr":
        return ([(f"60 epochs, lr {v:g}, cosine", {"epochs": 60, "lr": v}, True) for v in (1e-3, 3e-3, 1e-2, 3e-2)]
                + [(f"60 epochs, lr {lr:g}, constant", {"epochs": 60, "lr": lr, "schedule": "constant"}, True)])
    if question == "temperature":
        return [(f"T {t:g}, alpha {a:g}", {"epochs": epochs, "lr": lr, "temperature": t, "alpha": a}, (t, a) == (4, 0.5))
                for t in (1, 2, 4, 8) for a in (0.1, 0.5, 0.9)]
    if question == "augment":
        base = {"epochs": epochs, "lr": lr}
        return [("none", base, True),
                (f"shift {shift}", {**base, "shift": shift}, True),
                (f"shift {shift}, teacher logits cached per sample", {**base, "shift": shift, "cached": True}, False),
                ("noise 0.1", {**base, "noise": 0.1}, True),
                ("noise 0.3", {**base, "noise": 0.3}, True),
                (f"shift {shift} + noise 0.1", {**base, "shift": shift, "noise": 0.1}, True)]
    return []


def train(student, splits, teacher, *, seed: int, kd: bool, epochs: int, lr: float, schedule: str = "cosine",
          temperature: float = 4.0, alpha: float = 0.5, shift: int = 0, noise: float = 0.0, cached: bool = False,
          batch_size: int = 64) -> dict:
    """One run; every epoch's (val errors, val loss, test errors) of the BatchNorm-refreshed model."""
    import copy

    import torch
    import torch.nn.functional as F

    from compress import bn
    from compress.losses import hinton_kd_loss
    from compress.stages.distill import AugmentConfig, augmenter

    model = copy.deepcopy(student)
    gen, aug_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)  # as fit
    torch.manual_seed(seed)
    augment = augmenter(AugmentConfig(shift=shift, noise=noise), splits.input_shape)
    x, y = splits.train.x, torch.from_numpy(splits.train.y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = math.ceil(len(y) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps) if schedule == "cosine" else None
    online = kd and augment is not None and not cached
    cache = _logits(teacher, x) if kd and not online else None
    hist, start = [], time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(y), generator=gen)
        for b in range(steps):
            idx = order[b * batch_size:(b + 1) * batch_size]
            if len(idx) < 2:
                continue
            xb = torch.from_numpy(np.ascontiguousarray(x[idx.numpy()]))
            if augment is not None:
                xb = augment(xb, aug_gen)
            out = model(xb)
            if kd:
                with torch.no_grad():
                    soft = teacher(xb) if online else cache[idx]
                loss = hinton_kd_loss(out, soft, y[idx], temperature, alpha)
            else:
                loss = F.cross_entropy(out, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
        scored, _ = bn.fresh(model, x, seed + epoch)
        hist.append((*_errors(scored, splits.val), _errors(scored, splits.test)[0]))
    return {"hist": hist, "seconds": round(time.perf_counter() - start, 1)}


def _logits(model, x):
    import torch

    model.eval()
    with torch.no_grad():
        return torch.cat([model(torch.from_numpy(np.ascontiguousarray(x[i:i + 1000]))) for i in range(0, len(x), 1000)])


def _errors(model, split) -> tuple[int, float]:
    import torch
    import torch.nn.functional as F

    logits, target = _logits(model, split.x), torch.from_numpy(split.y)
    return int((logits.argmax(1) != target).sum()), float(F.cross_entropy(logits, target))


def pick(hist, rule: str = "val_accuracy") -> tuple[int, int]:
    """(test errors, epoch) of the epoch ``rule`` keeps: val_accuracy (ties: val loss), val_loss, last, patience_N."""
    h = hist
    if rule.startswith("patience_"):  # stop after N epochs without a better (val errors, val loss)
        n, best, since = int(rule.split("_")[1]), None, 0
        for i, (ve, vl, _) in enumerate(hist):
            if best is None or (ve, vl) < best:
                best, since = (ve, vl), 0
            else:
                since += 1
                if since >= n:
                    h = hist[:i + 1]
                    break
        rule = "val_accuracy"
    if rule == "val_accuracy":
        i = min(range(len(h)), key=lambda i: (h[i][0], h[i][1]))
    elif rule == "val_loss":
        i = min(range(len(h)), key=lambda i: h[i][1])
    else:
        i = len(h) - 1
    return h[i][2], i + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(Path(__file__).parents[1] / "recipes" / "mnist1d.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--questions", nargs="+", default=list(QUESTIONS), choices=QUESTIONS)
    ap.add_argument("--output", default="exported", help="output root whose .cache holds the teachers")
    ap.add_argument("--json", default="exported/distill_budget.json")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)  # small models on shared cores
    from compress.recipe import parse_recipe
    from compress.stages.distill import DistillConfig

    raw = yaml.safe_load(Path(args.recipe).read_text())
    first = next((s for s in raw["stages"] if s.get("type") == "distill"), {"type": "distill"})
    stage = DistillConfig(**first)  # the recipe's distill keys, the rest the stage's defaults
    runs: list[dict] = []
    todo = [q for q in args.questions if q not in ("rule", "final")]
    if "rule" in args.questions:
        todo += [q for q in ("budget", "lr") if q not in todo]
    for seed in args.seeds:
        recipe = parse_recipe({**raw, "seed": seed, "name": f"budget-seed{seed}", "stages": [first]})
        splits, teacher, student = _setup(recipe, args.output)
        shift = max(1, round(min(splits.input_shape[1:] or (10,)) / 10))
        for q in todo:
            for label, keys, with_scratch in configs(q, stage.lr, stage.epochs, shift):
                for kd in ((False, True) if with_scratch else (True,)):
                    r = train(student, splits, teacher, seed=seed, kd=kd, **keys)
                    runs.append({"question": q, "label": label, "seed": seed, "kd": kd, **r})
                    print(f"seed {seed} {q:>11} {label:<42} {'distilled' if kd else 'scratch':>9}: test errors "
                          f"{pick(r['hist'])[0]:4d}  ({r['seconds']:.0f} s)", flush=True)
        if "final" in args.questions:
            runs += _final(recipe, splits, teacher, seed, args.output)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}))
    print_tables(runs, args, stage)


def _setup(recipe, output: str):
    """The data split, the recipe's teacher (trained once, cached like ``compress run``), the student's init."""
    from compress import bn
    from compress.cache import Cache
    from compress.pipeline import ClassifyTask, prepare, train_cached

    prep = prepare(recipe)
    t = recipe.teacher.train
    key = ClassifyTask().teacher_key(recipe, prep)
    teacher, _ = train_cached(Cache(Path(output) / ".cache"), key, prep.teacher, prep.splits,
                              epochs=t.epochs, lr=t.lr, batch_size=t.batch_size, weight_decay=t.weight_decay,
                              seed=recipe.seed, desc="teacher", quiet=True)
    teacher = bn.fresh(teacher, prep.splits.train.x, recipe.seed)[0].eval()
    return prep.splits, teacher, prep.student


def _final(recipe, splits, teacher, seed: int, output: str) -> list[dict]:
    """The shipped path: the scratch baseline of ``compress run`` and the recipe's distill stage."""
    from compress.artifact import Artifact
    from compress.cache import Cache, cache_key
    from compress.context import Context
    from compress.pipeline import scratch_budget, prepare, train_cached
    from compress.stages import STAGES

    prep = prepare(recipe)
    budget = scratch_budget(recipe)
    out = []
    t0 = time.perf_counter()
    key = cache_key("bench-budget-scratch", recipe.student.model.model_dump(), budget, seed, splits.fingerprint)
    scratch, _ = train_cached(Cache(Path(output) / ".cache"), key, prep.student, splits, seed=recipe.seed,
                              desc="scratch", quiet=True, **budget)
    out.append({"question": "final", "label": "scratch", "seed": seed, "kd": False, "budget": budget,
                "test_errors": _errors(scratch, splits.test)[0], "seconds": round(time.perf_counter() - t0, 1)})
    ctx = Context(recipe=recipe, splits=splits, teacher=teacher, out_dir=Path(output) / "bench-budget", quiet=True)
    t0 = time.perf_counter()
    art = STAGES["distill"].fn(Artifact("student", "torch", prep.student), recipe.stages[0], ctx)
    out.append({"question": "final", "label": "distilled", "seed": seed, "kd": True,
                "test_errors": _errors(art.model, splits.test)[0], "seconds": round(time.perf_counter() - t0, 1)})
    print(f"seed {seed}       final scratch {out[0]['test_errors']}  distilled {out[1]['test_errors']}", flush=True)
    return out


def _change(scratch: int, kd: int) -> str:
    return f"{100 * (kd - scratch) / scratch:+.0f} %" if scratch else "n/a"


def print_tables(runs: list[dict], args, stage) -> None:
    seeds = sorted({r["seed"] for r in runs})
    print(f"\n{args.recipe}: seeds {seeds}; test errors per seed, and summed; weights chosen on val\n")

    def errors(q, label, kd, rule="val_accuracy"):
        by = {r["seed"]: r for r in runs if r["question"] == q and r["label"] == label and r["kd"] == kd}
        if not by:
            return None
        return [pick(by[s]["hist"], rule)[0] if "hist" in by[s] else by[s]["test_errors"] for s in sorted(by)]

    head = ("| {} | scratch | distilled | distilled vs scratch |\n|---|---|---|---|")
    for q in [q for q in ("budget", "lr", "augment", "temperature") if q in {r["question"] for r in runs}]:
        print(f"\n### {q}\n\n" + head.format("setting"))
        last = None  # a row without its own scratch run is compared with the one above it that has one
        for label in dict.fromkeys(r["label"] for r in runs if r["question"] == q):
            s, d = errors(q, label, False), errors(q, label, True)
            last = s or last
            ref = last if q != "temperature" else errors(q, "T 4, alpha 0.5", False)
            sc = f"{s} = {sum(s)}" if s else (f"(scratch as above: {sum(ref)})" if ref else "")
            print(f"| {label} | {sc} | {d} = {sum(d)} | {_change(sum(ref), sum(d)) if ref else ''} |")
    if "rule" in args.questions:
        print("\n### rule (kept epoch), over the budget and lr runs\n")
        print("| setting | rule | scratch | distilled | distilled vs scratch |\n|---|---|---|---|---|")
        for q in ("budget", "lr"):
            for label in dict.fromkeys(r["label"] for r in runs if r["question"] == q):
                for rule in ("val_accuracy", "val_loss", "last", "patience_10", "patience_20"):
                    s, d = errors(q, label, False, rule), errors(q, label, True, rule)
                    print(f"| {label} | {rule} | {sum(s)} | {sum(d)} | {_change(sum(s), sum(d))} |")
    if any(r["question"] == "final" for r in runs):
        s, d = errors("final", "scratch", False), errors("final", "distilled", True)
        budget = next(r["budget"] for r in runs if r["question"] == "final" and "budget" in r)
        print(f"\n### final: the recipe's distill stage ({stage.epochs} epochs, lr {stage.lr:g}, T {stage.temperature:g}, "
              f"alpha {stage.alpha:g}{', augment ' + str(stage.augment.model_dump()) if stage.augment else ''}) "
              f"vs its scratch baseline {budget}\n")
        print("| student | test errors per seed | summed | vs scratch |\n|---|---|---|---|")
        print(f"| scratch | {s} | {sum(s)} | |")
        print(f"| distilled | {d} | {sum(d)} | {_change(sum(s), sum(d))} (target: -15 % or better) |")
        secs = [r["seconds"] for r in runs if r["question"] == "final"]
        print(f"\n(training seconds per run: mean {statistics.mean(secs):.0f})")


if __name__ == "__main__":
    main()
