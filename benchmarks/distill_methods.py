"""Every distillation loss on a recipe's data (default: the built-in digits): same teacher, student, epochs and seeds.

    python benchmarks/distill_methods.py [--recipe recipes/digits.yaml] [--seeds 0 1 2] [--epochs N]
                                         [--student 16 3] [--no-sweep]
    python benchmarks/distill_methods.py --recipe recipes/mnist1d.yaml   # the harder built-in MNIST-1D

For each seed (which changes the data split, the initialisation and the batch order) the teacher of
the recipe is trained once or read from the cache that ``compress run`` fills
(``<output>/.cache``, same key), and the same student initialisation (the recipe's student, or
``cnn(WIDTH, DEPTH)`` with ``--student``) is trained by every method
with one ``distill`` stage (or ``train`` for the scratch student) for the same epochs, with the
learning rate, batch size and weight decay of the recipe's distill stage (its epochs unless ``--epochs``). Weights are
picked on val (as in every run); test is only measured. Prints one markdown table: test accuracy
mean ± std, test errors per seed and their mean, val accuracy, top-1 agreement with the teacher on
test, and training seconds (a shared, noisy machine: compare within one run only). Then a
temperature x alpha sweep of Hinton KD, with val accuracy beside test so that a choice can be made
on val. On signal data (C x L, MNIST-1D) the hint pairs the ``pool`` vectors (a linear projector) and the
attention-transfer rows are left out: the hint projector and attention maps take C x H x W maps only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import yaml

HINT = [{"teacher": "features.5", "student": "features.5"}]  # 128 vs 32 channels at 8 x 8: a 1x1 projector
HINT_1D = [{"teacher": "pool", "student": "pool"}]  # signals: the pooled vectors, a linear projector
AT = [{"teacher": "features.2", "student": "features.2"}, {"teacher": "features.5", "student": "features.5"}]
RKD = [{"kind": "rkd_distance", "teacher": "pool", "student": "pool"},
       {"kind": "rkd_angle", "teacher": "pool", "student": "pool"}]

# name -> distill stage keys ({}: the stage's default, Hinton with its temperature and alpha)
METHODS: dict[str, dict] = {
    "hinton (T4, a0.5)": {},
    "kl only (T4)": {"loss": [{"kind": "kl"}]},
    "mse on logits": {"loss": [{"kind": "mse"}]},
    "ce + hint": {"loss": [{"kind": "ce"}, {"kind": "hint", "pairs": HINT}]},
    "hinton + hint": {"loss": [{"kind": "hinton"}, {"kind": "hint", "weight": 0.5, "pairs": HINT}]},
    "ce + attention": {"loss": [{"kind": "ce"}, {"kind": "attention", "pairs": AT}]},
    "hinton + attention": {"loss": [{"kind": "hinton"}, {"kind": "attention", "pairs": AT}]},
    "ce + rkd": {"loss": [{"kind": "ce"}, *RKD]},
    "hinton + rkd": {"loss": [{"kind": "hinton"}, *RKD]},
    "mutual, 2 peers (no teacher)": {"peers": 2},
    "born-again, 2 generations": {"generations": 2},
    "hinton, student init from teacher": {"init_from_teacher": True},
    "chain: teacher -> cnn(32, 3) -> student": {"chain": [{"arch": "cnn", "width": 32, "depth": 3}]},
}
# Teachers that need files made per seed (see ``seed_files``); name -> distill stage keys with {placeholders}.
FILE_METHODS: dict[str, dict] = {
    "ensemble: teacher + cnn(32, 3) teacher": {"teachers": [{"recipe": True}, {"model": {"arch": "cnn", "width": 32, "depth": 3},
                                                                              "weights": "{second}"}]},
    "black box: teacher as ONNX": {"teachers": [{"onnx": "{onnx}"}]},
    "black box: probabilities file": {"teachers": [{"logits": "{probs}", "probabilities": True}]},
}
SWEEP_T, SWEEP_ALPHA = (2.0, 4.0, 8.0), (0.1, 0.5, 0.9)


def _ms(values, fmt="{:.2f}") -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(Path(__file__).parents[1] / "recipes" / "digits.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None, help="default: the recipe's first distill stage's (30 for "
                                                             "recipes/digits.yaml)")
    ap.add_argument("--student", type=int, nargs=2, default=None, metavar=("WIDTH", "DEPTH"),
                    help="a cnn(WIDTH, DEPTH) student; default: the recipe's student")
    ap.add_argument("--output", default="exported", help="output root whose .cache holds the teachers")
    ap.add_argument("--methods", nargs="*", help="subset of method names (default: all)")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--json", default="exported/distill_methods.json")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)  # small models: extra threads only add contention on shared cores
    from compress.artifact import Artifact
    from compress.cache import cache_key
    from compress.context import Context, predict_logits
    from compress.cache import Cache
    from compress.pipeline import prepare, train_cached
    from compress.recipe import parse_recipe
    from compress.stages import STAGES
    from compress.models import describe_spec
    from compress.training import evaluate_split

    raw = yaml.safe_load(Path(args.recipe).read_text())
    first = next((dict(s) for s in raw.get("stages", []) if s.get("type") == "distill"), {})
    # Every method and the scratch runs train with the recipe's distill budget: epochs, lr, batch size, weight decay.
    base = {k: first[k] for k in ("lr", "batch_size", "weight_decay") if k in first}
    if args.epochs is None:
        from compress.stages.distill import DistillConfig

        args.epochs = first.get("epochs", DistillConfig.model_fields["epochs"].default)
    if args.student:
        raw["student"] = {"model": {"arch": "cnn", "width": args.student[0], "depth": args.student[1]}}
    methods = {k: v for k, v in {**METHODS, **FILE_METHODS}.items() if not args.methods or k in args.methods}
    probe = prepare(parse_recipe({**raw, "name": "bench", "stages": [{"type": "distill", "epochs": 1}]}))
    args.student_spec = describe_spec(parse_recipe({**raw, "name": "bench", "stages": [{"type": "distill"}]}).student.model)
    if len(probe.splits.input_shape) == 2:  # signals C x L: no C x H x W maps for the hint projector or attention
        methods = {k: json.loads(json.dumps(v).replace(json.dumps(HINT), json.dumps(HINT_1D)))
                   for k, v in methods.items() if "attention" not in k}
        print("signal data: hint on the pool vectors; attention transfer left out (C x H x W maps only)", flush=True)
    runs: dict[str, list[dict]] = {}
    args.base = base

    def record(name, seed, model, splits, teacher_test, seconds):
        test_acc, _ = evaluate_split(model, splits.test.x, splits.test.y)
        val_acc, _ = evaluate_split(model, splits.val.x, splits.val.y)
        pred = predict_logits(model, splits.test.x).argmax(1)
        runs.setdefault(name, []).append({
            "seed": seed, "test_accuracy": test_acc, "test_errors": round((1 - test_acc) * len(splits.test.y)),
            "val_accuracy": val_acc, "agreement": float((pred == teacher_test).float().mean()), "seconds": seconds})
        r = runs[name][-1]
        print(f"seed {seed} {name:>26}: test errors {r['test_errors']:3d}  val {val_acc:.4f}  {seconds:5.1f} s", flush=True)

    def stage_cfg(stage: dict):
        return parse_recipe({**raw, "seed": 0, "name": "bench", "stages": [stage]}).stages[0]

    jobs = [(name, {"type": "distill", "epochs": args.epochs, **base, **keys}) for name, keys in methods.items()]
    if not args.no_sweep:
        jobs += [(f"sweep T{t:g} a{a:g}", {"type": "distill", "epochs": args.epochs, **base, "temperature": t, "alpha": a})
                 for t in SWEEP_T for a in SWEEP_ALPHA if not (t == 4.0 and a == 0.5 and "hinton (T4, a0.5)" in methods)]
    for seed in args.seeds:
        recipe = parse_recipe({**raw, "seed": seed, "name": f"bench-seed{seed}",
                               "stages": [{"type": "distill", "epochs": args.epochs}]})
        prep = prepare(recipe)
        splits = prep.splits
        t = recipe.teacher.train
        key = cache_key("teacher", recipe.teacher.model.model_dump(), t.model_dump(), seed, splits.fingerprint)
        teacher, _ = train_cached(Cache(Path(args.output) / ".cache"), key, prep.teacher, splits, epochs=t.epochs, lr=t.lr,
                                   batch_size=t.batch_size, weight_decay=t.weight_decay, seed=seed, desc="teacher",
                                   quiet=True)
        teacher = fresh_teacher(teacher, splits, seed)
        teacher_test = predict_logits(teacher, splits.test.x).argmax(1)
        record("teacher", seed, teacher, splits, teacher_test, 0.0)
        ctx = Context(recipe=recipe, splits=splits, teacher=teacher, out_dir=Path(args.output) / "bench-methods", quiet=True)
        student = Artifact("student", "torch", prep.student)
        t0 = time.perf_counter()
        scratch = STAGES["train"].fn(student, stage_cfg({"type": "train", "epochs": args.epochs, **base}), ctx)
        record("scratch", seed, scratch.model, splits, teacher_test, time.perf_counter() - t0)
        # Born-again and mutual learning train two student-sized models: the baseline at equal compute.
        t0 = time.perf_counter()
        scratch2 = STAGES["train"].fn(student, stage_cfg({"type": "train", "epochs": 2 * args.epochs, **base}), ctx)
        record(f"scratch, {2 * args.epochs} epochs", seed, scratch2.model, splits, teacher_test, time.perf_counter() - t0)
        files = seed_files(Path(args.output) / "bench-methods" / f"seed{seed}", teacher, splits, raw, seed, args.output)
        for name, stage in jobs:
            if name in FILE_METHODS:
                stage = json.loads(json.dumps(stage).replace("{second}", files["second"])
                                   .replace("{onnx}", files["onnx"]).replace("{probs}", files["probs"]))
            t0 = time.perf_counter()
            out = STAGES["distill"].fn(student, stage_cfg(stage), ctx)
            record(name, seed, out.model, splits, teacher_test, time.perf_counter() - t0)

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    print_tables(runs, args)


def fresh_teacher(teacher, splits, seed: int):
    """The teacher as a run uses it: BatchNorm statistics re-estimated when stale (compress/bn.py, if present)."""
    try:
        from compress import bn
    except ImportError:
        return teacher
    return bn.fresh(teacher, splits.train.x, seed)[0]


def seed_files(d: Path, teacher, splits, raw: dict, seed: int, output: str) -> dict[str, str]:
    """A second teacher (cnn(32, 3), trained like the recipe's, other seed) as safetensors, the recipe's
    teacher as an ONNX black box, and its training-split probabilities as a .npy black box."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from compress._onnx import export_onnx
    from compress.cache import cache_key
    from compress.context import predict_logits
    from compress.models.zoo import cnn
    from compress.cache import Cache
    from compress.pipeline import train_cached

    d.mkdir(parents=True, exist_ok=True)
    t = raw["teacher"].get("train", {})
    torch.manual_seed(seed + 100)
    spec = {"arch": "cnn", "width": 32, "depth": 3}
    key = cache_key("bench-second-teacher", spec, t, seed, splits.fingerprint)
    second, _ = train_cached(Cache(Path(output) / ".cache"), key, cnn(splits.input_shape, splits.num_classes, 32, 3), splits,
                              epochs=t.get("epochs", 30), lr=t.get("lr", 1e-3), batch_size=64, weight_decay=0.0,
                              seed=seed + 100, desc="second teacher", quiet=True)
    save_file(second.state_dict(), str(d / "second.safetensors"))
    export_onnx(teacher, splits.input_shape, d / "teacher.onnx")
    probs = torch.softmax(predict_logits(teacher, splits.train.x), 1).numpy().astype(np.float32)
    np.save(d / "probs.npy", probs)
    return {"second": str(d / "second.safetensors"), "onnx": str(d / "teacher.onnx"), "probs": str(d / "probs.npy")}


def print_tables(runs: dict[str, list[dict]], args) -> None:
    def row(name):
        rs = runs[name]
        errs = [r["test_errors"] for r in rs]
        return (f"| {name} | {_ms([100 * r['test_accuracy'] for r in rs])} | {errs} mean {statistics.mean(errs):.2f} | "
                f"{_ms([100 * r['val_accuracy'] for r in rs])} | {_ms([100 * r['agreement'] for r in rs], '{:.1f}')} | "
                f"{_ms([r['seconds'] for r in rs], '{:.0f}')} |")

    head = ("| method | test accuracy % | test errors (per seed) | val accuracy % | agreement with teacher % | train s |\n"
            "|---|---|---|---|---|---|")
    seeds = len(runs["teacher"])
    print(f"\n{args.recipe}: student {args.student_spec}, {args.epochs} epochs{', ' + str(args.base) if args.base else ''}, {seeds} seeds "
          f"{list(args.seeds)}, mean ± std\n")
    print(head)
    for name in runs:
        if not name.startswith("sweep"):
            print(row(name))
    sweep = [n for n in runs if n.startswith("sweep")] + (["hinton (T4, a0.5)"] if "hinton (T4, a0.5)" in runs else [])
    if any(n.startswith("sweep") for n in sweep):
        print("\nHinton KD, temperature x alpha (alpha = weight of the hard-label loss)\n")
        print(head)
        for name in sorted(sweep, key=lambda n: -statistics.mean(r["val_accuracy"] for r in runs[n])):
            print(row(name))


if __name__ == "__main__":
    main()
