"""Pruning by ratio vs by MACs target vs by latency target, and rounded vs unrounded channel counts.

    python benchmarks/pruning.py [--seed 0] [--latency-factor 0.7] [--recover-steps 20] [--rounds 30]

The student is the default recipe's (recipes/digits.yaml: cnn 16-32-64), distilled from its teacher
with the recipe's own distill stage (the teacher comes from the cache ``compress run`` fills,
``<output>/.cache``, same key; the distilled student is cached there too). Then:

1. Every pruning variant, each followed by the recipe's own finetune stage (10 epochs, KD): test
   accuracy (the test split is never trained, selected or calibrated on), MACs, params, and onnxruntime
   p50 at batch 1 on 1 thread and at batch 64 on all threads, as speed-ups over the unpruned student,
   all models timed interleaved in one process (``compress.bench.time_interleaved``). The latency
   target is ``--latency-factor`` x the unpruned student's p50 measured here first (an absolute number
   would mean something else on another machine); the speed-up target is ``--speedup`` over the unpruned
   student, timed interleaved at every step.
2. Rounded vs unrounded channels: ratios 0.2..0.6 with ``round_to`` null, 4, 8 and 16 (no fine-tuning,
   latency only), timed interleaved with the unpruned student.

Prints markdown tables; timings on a shared machine are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's compress, not an installed one

VARIANTS: dict[str, dict] = {
    "ratio 0.3, unrounded": {"ratio": 0.3, "round_to": None},
    "ratio 0.3, round_to 8": {"ratio": 0.3},
    "MACs 0.25, unrounded": {"target": {"macs": 0.25}, "round_to": None},
    "MACs 0.25, round_to 8": {"target": {"macs": 0.25}},
    "latency, unrounded": {"target": {"latency_ms": None}, "round_to": None},
    "latency, round_to 8": {"target": {"latency_ms": None}},
    "speed-up, unrounded": {"target": {"speedup": None}, "round_to": None},
    "speed-up, round_to 8": {"target": {"speedup": None}},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(Path(__file__).parents[1] / "recipes" / "digits.yaml"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default="exported", help="output root whose .cache holds the teacher")
    ap.add_argument("--latency-factor", type=float, default=0.7, help="latency target = this x the student's p50")
    ap.add_argument("--speedup", type=float, default=1.3, help="speed-up target over the unpruned student")
    ap.add_argument("--recover-steps", type=int, default=20, help="KD steps after every target step")
    ap.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)  # small models: extra threads only add contention on shared cores
    from compress.artifact import Artifact
    from compress.cache import Cache, cache_key
    from compress.context import Context
    from compress.pipeline import prepare, train_cached
    from compress.recipe import parse_recipe
    from compress.stages import STAGES
    from compress.stages.prune import channel_table, count_macs_params, measure_latency
    from compress.training import evaluate_split

    started = time.perf_counter()
    raw = yaml.safe_load(Path(args.recipe).read_text())
    recipe = parse_recipe({**raw, "seed": args.seed, "name": "bench-pruning"})
    by_type = {st.type: st for st in recipe.stages}
    prep = prepare(recipe)
    splits, shape = prep.splits, prep.splits.input_shape
    cache = Cache(Path(args.output) / ".cache")
    t = recipe.teacher.train
    tkey = cache_key("teacher", recipe.teacher.model.model_dump(), t.model_dump(), args.seed, splits.fingerprint)
    teacher, _ = train_cached(cache, tkey, prep.teacher, splits, epochs=t.epochs, lr=t.lr, batch_size=t.batch_size,
                               weight_decay=t.weight_decay, seed=args.seed, desc="teacher", quiet=True)
    ctx = Context(recipe=recipe, splits=splits, teacher=teacher, out_dir=Path(args.output) / "bench-pruning", quiet=True,
                  teacher_key=tkey, cache=cache)
    dcfg = by_type["distill"]
    skey = cache_key("bench-pruning-student", recipe.student.model.model_dump(), dcfg.model_dump(mode="json"), tkey,
                     args.seed, splits.fingerprint)
    student = cache.get_weights("weights", skey, prep.student)
    if student is None:
        student = STAGES["distill"].fn(Artifact("student", "torch", prep.student), dcfg, ctx).model
        cache.put_weights("weights", skey, student)
    macs0, params0 = count_macs_params(student, shape)
    art = Artifact("distilled", "torch", student, params=params0, macs=macs0)

    def test_acc(m) -> float:
        return evaluate_split(m, splits.test.x, splits.test.y)[0]

    # the latency target, from the student's p50 measured on this machine now
    base_p50 = measure_latency({"student": student}, shape, rounds=args.rounds)["student"].p50
    target_ms = round(args.latency_factor * base_p50, 4)
    print(f"unpruned student: p50 {base_p50 * 1000:.1f} us at batch 1 -> latency target {target_ms * 1000:.1f} us", flush=True)

    ctx.stage_index = 1
    results, models = [], {"unpruned (distilled)": student}
    for name, keys in VARIANTS.items():
        keys = dict(keys)
        if "target" in keys:
            goal = {k: {"latency_ms": target_ms, "speedup": args.speedup}.get(k, v) for k, v in keys["target"].items()}
            keys = {**keys, "target": goal, "recover_steps": args.recover_steps}
        cfg = STAGES["prune"].config.model_validate({"type": "prune", **keys})
        t0 = time.perf_counter()
        pruned = STAGES["prune"].fn(art, cfg, ctx)
        prune_s = time.perf_counter() - t0
        ctx.stage_index = 2
        tuned = STAGES["finetune"].fn(pruned, by_type["finetune"], ctx)
        ctx.stage_index = 1
        models[name] = tuned.model
        results.append({"name": name, "channels": [v for k, v in channel_table(tuned.model).items() if k != "classifier"],
                        "macs": pruned.macs, "params": pruned.params, "pruned_acc": test_acc(pruned.model),
                        "acc": test_acc(tuned.model), "prune_s": prune_s, "info": pruned.info})
        note = "; ".join(pruned.info.get("notes", [])[:1])
        print(f"{name:>24}: channels {results[-1]['channels']}  test {results[-1]['acc']:.2%}  "
              f"prune {prune_s:.1f} s  {note}", flush=True)

    b1 = measure_latency(models, shape, batch=1, threads=1, rounds=args.rounds, calls=20, seed=args.seed)
    b64 = measure_latency(models, shape, batch=64, threads=0, rounds=args.rounds, calls=5, seed=args.seed)
    ref = "unpruned (distilled)"
    print(f"\n### Pruning by ratio vs by target (seed {args.seed}; each pruned model then fine-tuned {by_type['finetune'].epochs} "
          f"epochs with KD; latency target {target_ms * 1000:.1f} us = {args.latency_factor} x the unpruned p50; "
          f"speed-up target {args.speedup}x over the unpruned student, timed interleaved; "
          f"target steps recover with {args.recover_steps} KD steps)\n")
    print("| variant | channels | MACs | params | test acc after prune | test acc after finetune | batch 1 p50 us | speed-up "
          "| batch 64 p50 us | speed-up | target met | prune s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {ref} | {[v for k, v in channel_table(student).items() if k != 'classifier']} | {macs0:,} | {params0:,} | - | "
          f"{test_acc(student):.2%} | {b1[ref].p50 * 1000:.1f} | 1.00x | {b64[ref].p50 * 1000:.0f} | 1.00x | - | - |")
    for r in results:
        n = r["name"]
        met = r["info"].get("target_met")
        print(f"| {n} | {r['channels']} | {r['macs']:,} ({r['macs'] / macs0:.0%}) | {r['params']:,} | {r['pruned_acc']:.2%} | "
              f"{r['acc']:.2%} | {b1[n].p50 * 1000:.1f} | {b1[ref].p50 / b1[n].p50:.2f}x | {b64[n].p50 * 1000:.0f} | "
              f"{b64[ref].p50 / b64[n].p50:.2f}x | {'-' if met is None else ('yes' if met else 'no')} | {r['prune_s']:.1f} |")
    for r in results:
        if "tables" in r["info"]:
            t = r["info"]["tables"][0]
            print(f"\n{r['name']}: " + " ".join(r["info"]["notes"]) + "\n")
            print("| " + " | ".join(t["columns"]) + " |\n|" + "---|" * len(t["columns"]))
            for row in t["rows"]:
                print("| " + " | ".join(map(str, row)) + " |")

    # --- rounded vs unrounded channels, latency only ---
    grid = {ref: student}
    rows = []
    for ratio in (0.2, 0.3, 0.4, 0.5, 0.6):
        for rt in (None, 4, 8, 16):
            cfg = STAGES["prune"].config.model_validate({"type": "prune", "ratio": ratio, "round_to": rt})
            out = STAGES["prune"].fn(art, cfg, ctx)
            name = f"ratio {ratio} round_to {rt}"
            grid[name] = out.model
            rows.append((name, ratio, rt, [v for k, v in channel_table(out.model).items() if k != "classifier"], out.macs))
    g1 = measure_latency(grid, shape, batch=1, threads=1, rounds=args.rounds, calls=20, seed=args.seed)
    g64 = measure_latency(grid, shape, batch=64, threads=0, rounds=args.rounds, calls=5, seed=args.seed)
    print("\n### Rounded vs unrounded channels (no fine-tuning; speed-ups over the unpruned student, timed interleaved)\n")
    print("| ratio | round_to | channels | MACs | batch 1 p50 us | speed-up | batch 64 p50 us | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| 0 | - | {[v for k, v in channel_table(student).items() if k != 'classifier']} | {macs0:,} | "
          f"{g1[ref].p50 * 1000:.1f} | 1.00x | {g64[ref].p50 * 1000:.0f} | 1.00x |")
    for name, ratio, rt, chans, macs in rows:
        print(f"| {ratio} | {rt or 'none'} | {chans} | {macs:,} ({macs / macs0:.0%}) | {g1[name].p50 * 1000:.1f} | "
              f"{g1[ref].p50 / g1[name].p50:.2f}x | {g64[name].p50 * 1000:.0f} | {g64[ref].p50 / g64[name].p50:.2f}x |")
    import onnxruntime
    import torch_pruning

    from compress.bench import cpu_info

    cpu = cpu_info()
    print(f"\n{cpu['model']}, {cpu['cores']} cores, {', '.join(cpu['features'])}; onnxruntime {onnxruntime.__version__}, "
          f"torch-pruning {torch_pruning.__version__}; {time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
