"""Small language models on the edge: the targets of recipes/tiny-lm.yaml and an INT4 accuracy_level x block_size grid.

    python benchmarks/tiny_lm.py [recipes/tiny-lm.yaml] [--output exported] [--rounds 8]

Runs the recipe (trained models come from the cache after the first run), prints its targets table,
then quantizes the fp32 student (the last stage file that is not quantized) and teacher ONNX files with MatMulNBits at every block size (32, 64, 128) and
accuracy_level (0 = default, 1 = fp32 compute, 4 = INT8 compute), scores each on the test split
(bits per byte, onnxruntime) and times decoding at 1 thread, all files interleaved in one process.
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
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from compress.lm.data import eval_windows, load_text
    from compress.lm.onnx import OrtDecoder, bench_generation, quantize_decoder
    from compress.lm.report import student
    from compress.lm.train import evaluate_lm
    from compress.pipeline import run
    from compress.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    report = run(recipe, output=args.output, quiet=True)
    console = Console(width=160)
    t = Table(title=f"targets: {recipe.name} (run took {report['run_seconds']:.0f} s; see report.md)")
    for c in ("target", "measured", "met"):
        t.add_column(c)
    for row in report["targets"]:
        t.add_row(row["target"], row["measured"], "yes" if row["met"] else "NO")
    console.print(t)

    out = Path(report["files"]["dir"])
    sources = {"student": out / student(report["models"])["file"], "teacher": out / "teacher.onnx"}
    splits = load_text(recipe.data, recipe.seed)
    windows = eval_windows(splits.test, recipe.teacher.model.context, recipe.eval.max_tokens)
    grid = Path(args.output) / ".cache" / "lm" / "int4-grid"
    for model, src in sources.items():
        files, quality = {"fp32": src}, {}
        for block in (32, 64, 128):
            for level in (0, 1, 4):
                dst = grid / f"{recipe.name}-{model}-b{block}-a{level}.onnx"
                quantize_decoder(src, dst, "int4_weight_only", block_size=block, accuracy_level=level)
                files[f"b{block}-a{level}"] = dst
        for name, path in files.items():
            quality[name] = evaluate_lm(OrtDecoder(path, threads=0).logits, windows).bits_per_byte
        b = recipe.bench
        rows = bench_generation(files, windows[:1, :b.prompt], b.new_tokens, threads=[1], rounds=args.rounds,
                                calls=b.calls)
        by = {r["model"]: r for r in rows}
        g = Table(title=f"INT4 MatMulNBits on the {model}: block_size x accuracy_level, 1 thread, "
                        f"{args.rounds} interleaved rounds")
        for c in ("file", "block", "accuracy_level", "size", "test bits/byte", "vs fp32", "decode tok/s", "vs fp32",
                  "TTFT p50 ms"):
            g.add_column(c, justify="left" if c == "file" else "right")
        for name in files:
            r = by[name]
            block, level = ("-", "-") if name == "fp32" else (name.split("-")[0][1:], name.split("-")[1][1:])
            g.add_row(name, block, level, f"{r['size_bytes'] / 1e3:.1f} kB", f"{quality[name]:.4f}",
                      f"{quality[name] - quality['fp32']:+.4f}", f"{r['tokens_per_s']:.0f}",
                      f"{r['tokens_per_s'] / by['fp32']['tokens_per_s']:.2f}x", f"{r['ttft_ms']['p50']:.2f}")
        console.print(g)

if __name__ == "__main__":
    main()
