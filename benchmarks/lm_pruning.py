"""Measured LM pruning: heads, MLP hidden units, or both removed from the distilled student, then a KD finetune.

    python benchmarks/lm_pruning.py [recipes/tiny-lm.yaml] [--output exported] [--steps 100] [--rounds 40]

Every variant runs the recipe's torch stages before its export (the same distilled student, from the
cache after the first variant), then ``prune`` + ``finetune`` (token KD from the teacher, ``--steps``
steps) and the export. The control ``finetune only`` spends the same extra steps without pruning, so
a pruned variant's loss is pruning's, not fewer steps'. Test bits/byte and agreement with the teacher
come from each run's report (onnxruntime on the fp32 student file); decode tokens/s of every student file
is timed at 1 thread in one process, all files interleaved, as a ratio to the unpruned student (the
control has the unpruned architecture: its ratio shows the timing noise of the machine).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = {  # name -> prune stage (None: no prune); every variant but "student" gets the KD finetune
    "student (distilled, unpruned)": "skip",
    "finetune only (control)": None,
    "heads 0.5": {"heads": 0.5},
    "mlp 0.5": {"mlp": 0.5},
    "heads 0.5 + mlp 0.5": {"heads": 0.5, "mlp": 0.5},
}


def variant_recipe(recipe, name: str, prune, steps: int):
    """The recipe with its torch stages, then (prune +) finetune, then export; no quantize, no scratch."""
    from compress.stages.lm_export import LMExportConfig
    from compress.stages.lm_finetune import LMFinetuneConfig
    from compress.stages.lm_prune import LMPruneConfig

    torch_stages = [st for st in recipe.stages if st.type in ("distill", "prune", "finetune")]
    export = next((st for st in recipe.stages if st.type == "export"), LMExportConfig(type="export"))
    extra = []
    if prune != "skip":
        if prune:
            extra.append(LMPruneConfig(type="prune", **prune))
        extra.append(LMFinetuneConfig(type="finetune", steps=steps, distill=True))
    slug = name.split(" (")[0].replace(" + ", "-").replace(" ", "")
    return recipe.model_copy(update={
        "name": f"{recipe.name}-prune-{slug}", "stages": [*torch_stages, *extra, export], "baseline": "none",
        "samples": recipe.samples.model_copy(update={"count": 0}),
        "bench": recipe.bench.model_copy(update={"rounds": 3, "calls": 1})})


def decode_ratios(files: dict[str, Path], prompt, new_tokens: int, *, rounds: int, calls: int,
                  seed: int) -> tuple[dict[str, float], dict[str, float]]:
    """Greedy decode of ``new_tokens`` with the KV cache at 1 thread, every file in every round (random order,
    ``compress.bench.time_rounds``). Per round, each file's fastest call; tokens/s is the median over rounds,
    and the ratio to the first file is the median of the per-round ratios: a round's files ran back to
    back, so a busy neighbour slows them alike and the ratio keeps only what the files differ in."""
    import numpy as np

    from compress.bench import time_rounds
    from compress.lm.onnx import OrtDecoder

    runners = {}
    for name, path in files.items():
        dec = OrtDecoder(path, threads=1)
        logits0, past0 = dec.step(prompt, dec.empty_past(len(prompt)))

        def decode(dec=dec, past0=past0, first=logits0[:, -1].argmax(-1)[:, None]):
            nxt, past = first, past0
            for _ in range(new_tokens):
                logits, past = dec.step(nxt, past)
                nxt = logits[:, -1].argmax(-1)[:, None]
            return nxt

        runners[name] = decode
    samples = time_rounds(runners, rounds=rounds, calls=calls, warmup=3, seed=seed)
    best = {n: s.min(axis=1).astype(float) for n, s in samples.items()}  # (rounds,) ns
    base = best[next(iter(files))]
    tps = {n: float(new_tokens / (np.median(t) / 1e9)) for n, t in best.items()}
    return tps, {n: float(np.median(base / t)) for n, t in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", nargs="?", default=str(ROOT / "recipes" / "tiny-lm.yaml"))
    ap.add_argument("--output", default="exported")
    ap.add_argument("--steps", type=int, default=100, help="KD finetune steps after pruning")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--calls", type=int, default=4, help="timed calls per file per round")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from compress.lm.data import eval_windows, load_text
    from compress.lm.report import student
    from compress.pipeline import run
    from compress.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    rows, files = {}, {}
    for name, prune in VARIANTS.items():
        r = variant_recipe(recipe, name, prune, args.steps)
        print(f"{name}: running {r.name}", flush=True)
        report = run(r, output=args.output, quiet=True)
        fp32 = student(report["models"])  # the export stage's file (the variant's last stage)
        rows[name] = (fp32["params"], fp32)
        files[name] = Path(fp32["path"])

    splits = load_text(recipe.data, recipe.seed)
    windows = eval_windows(splits.test, recipe.teacher.model.context, recipe.eval.max_tokens)
    b = recipe.bench
    tps, ratio = decode_ratios(files, windows[:1, :b.prompt], b.new_tokens, rounds=args.rounds, calls=args.calls,
                               seed=recipe.seed)

    t = Table(title=f"pruning the {recipe.name} student: prune + {args.steps} KD finetune steps; decode at 1 thread, "
                    f"{args.rounds} interleaved rounds")
    cols = ["variant", "params", "test bits/byte", "agreement", "ONNX size", "decode tok/s", "vs unpruned"]
    for c in cols:
        t.add_column(c, justify="left" if c == "variant" else "right")
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, (params, m) in rows.items():
        cells = [name, f"{params:,}", f"{m['bits_per_byte']:.4f}", f"{m['agreement']:.1%}",
                 f"{m['size_bytes'] / 1e3:.1f} kB", f"{tps[name]:.0f}", f"{ratio[name]:.2f}x"]
        t.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    console = Console(width=160)
    console.print(t)
    print("\n".join(md))


if __name__ == "__main__":
    main()
