"""Accuracy-aware INT4 for the LM student: max_bpb_increase x fallback (fp32, int8), chosen on validation, scored on test.

    python benchmarks/lm_quantize_budget.py [recipes/tiny-lm.yaml] [--output exported] [--budgets 0.002 0.005 0.01]

Runs the recipe (trained models from the cache after the first run), then, for every budget and fallback,
the search of ``compress.lm.quantize.quantize_within`` on the fp32 student file (the last stage file that is not
quantized: the export; validation split).
Each shipped file is scored on the test split (bits/byte, agreement with the teacher's ONNX file) and all
files are timed decoding at 1 thread, interleaved, as ratios to the fp32 student (``lm_pruning.decode_ratios``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", nargs="?", default=str(ROOT / "recipes" / "tiny-lm.yaml"))
    ap.add_argument("--output", default="exported")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.002, 0.005, 0.01])
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()

    from benchmarks.lm_pruning import decode_ratios
    from compress.lm.data import eval_windows, load_text
    from compress.lm.onnx import OrtDecoder, quantize_decoder
    from compress.lm.quantize import quantize_within
    from compress.lm.report import student
    from compress.lm.train import evaluate_lm
    from compress.pipeline import run
    from compress.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    report = run(recipe, output=args.output, quiet=True)
    out = Path(report["files"]["dir"])
    q = next((st for st in recipe.stages if st.type == "quantize" and st.mode == "int4_weight_only"), None)
    block, level = (q.block_size, q.accuracy_level) if q else (32, 4)
    splits = load_text(recipe.data, recipe.seed)
    ctx = recipe.teacher.model.context
    val = eval_windows(splits.val, ctx, recipe.eval.max_tokens)
    test = eval_windows(splits.test, ctx, recipe.eval.max_tokens)
    work = Path(args.output) / ".cache" / "lm" / "int4-budget"
    work.mkdir(parents=True, exist_ok=True)

    src = out / student(report["models"])["file"]  # the fp32 student: the last stage file that is not quantized
    files = {"fp32": src, "all INT4": work / "all-int4.onnx"}
    quantize_decoder(src, files["all INT4"], "int4_weight_only", block_size=block, accuracy_level=level)
    infos = {}
    for budget in args.budgets:
        for fallback in ("fp32", "int8"):
            name = f"max {budget:g}, {fallback}"
            files[name] = work / f"max{budget:g}-{fallback}.onnx"
            infos[name] = quantize_within(src, files[name], "int4_weight_only", budget, val, block_size=block,
                                          accuracy_level=level, fallback=fallback)
            print(f"{name}: kept {infos[name][fallback + '_layers']}", flush=True)

    teacher_top1 = evaluate_lm(OrtDecoder(out / "teacher.onnx", threads=0).logits, test).top1
    scores = {n: evaluate_lm(OrtDecoder(p, threads=0).logits, test, teacher_top1) for n, p in files.items()}
    ref_val = evaluate_lm(OrtDecoder(src, threads=0).logits, val).bits_per_byte
    b = recipe.bench
    _, ratio = decode_ratios(files, test[:1, :b.prompt], b.new_tokens, rounds=args.rounds, calls=4, seed=recipe.seed)

    cols = ["file", "layers kept", "val bits/byte increase", "test bits/byte", "test increase", "agreement", "size",
            "decode vs fp32"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for n, path in files.items():
        info = infos.get(n)
        if info:
            kept, val_inc = len(info[info["fallback"] + "_layers"]), info["val_bpb_increase"]
        else:
            kept = "-" if n == "fp32" else 0
            val_inc = 0.0 if n == "fp32" else evaluate_lm(OrtDecoder(path, threads=0).logits, val).bits_per_byte - ref_val
        s = scores[n]
        lines.append(f"| {n} | {kept} | {val_inc:+.4f} | {s.bits_per_byte:.4f} | "
                     f"{s.bits_per_byte - scores['fp32'].bits_per_byte:+.4f} | {s.agreement:.1%} | "
                     f"{path.stat().st_size / 1e3:.1f} kB | {ratio[n]:.2f}x |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
