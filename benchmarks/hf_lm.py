"""Hugging Face models in task: lm recipes: recipes/tiny-lm.yaml with an HF student, and with an HF teacher.

    python benchmarks/hf_lm.py [--output exported] [--steps 400]

Offline: the HF folders are written by this script (transformers configs, random init, save_pretrained) under
``<output>/hf-models/``; nothing is downloaded. Three runs of the tiny-lm recipe, same data, seed and step budgets:

* ``tiny-lm``: the recipe as shipped (built-in GPT teacher 160 wide x 6 layers, built-in GPT student 64 x 2);
* ``tiny-lm-hf-student``: the same teacher (from the cache) -> a GPT-2 folder of the student's shape
  (n_embd 64, 2 layers, 2 heads, 64 positions, dropout 0), token KD; scratch = the same config, fresh init;
* ``tiny-lm-hf-teacher``: a Llama folder (hidden 128, 6 layers, 4 heads, 2 key/value heads, SwiGLU 256),
  fine-tuned with ``teacher.train`` for the recipe's teacher steps -> the built-in GPT student.

Prints each run's models (test bits/byte, agreement, sizes) and its ONNX generation rows at 1 thread, then times the
ONNX files of all three runs against each other (1 thread, interleaved in one process): the ratios to compare.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_folders(root: Path) -> dict[str, Path]:
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    folders = {"gpt2-64x2": root / "gpt2-64x2", "llama-128x6": root / "llama-128x6"}
    torch.manual_seed(0)
    if not (folders["gpt2-64x2"] / "config.json").exists():
        cfg = transformers.GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=2, resid_pdrop=0.0,
                                      embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
        transformers.GPT2LMHeadModel(cfg).save_pretrained(str(folders["gpt2-64x2"]))
    if not (folders["llama-128x6"] / "config.json").exists():
        cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=6,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                       bos_token_id=0, eos_token_id=0, pad_token_id=0)
        transformers.LlamaForCausalLM(cfg).save_pretrained(str(folders["llama-128x6"]))
    return folders


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="exported")
    ap.add_argument("--steps", type=int, default=None, help="override every step budget (a quick look); default: the recipe's")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from compress.lm.report import student
    from compress.pipeline import run
    from compress.recipe import load_recipe

    out = Path(args.output)
    folders = make_folders(out / "hf-models")
    base = yaml.safe_load((ROOT / "recipes" / "tiny-lm.yaml").read_text())
    if args.steps:
        base["teacher"]["train"]["steps"] = args.steps
        for st in base["stages"]:
            if "steps" in st:
                st["steps"] = args.steps
    ctx = base["teacher"]["model"]["context"]
    variants = {
        "tiny-lm": {},
        "tiny-lm-hf-student": {"student": {"model": {"hf": str(folders["gpt2-64x2"]), "context": ctx}}},
        "tiny-lm-hf-teacher": {"teacher": {"model": {"hf": str(folders["llama-128x6"]), "context": ctx},
                                           "train": base["teacher"]["train"]}},
    }
    console = Console(width=170)
    files, ref = {}, None
    for name, change in variants.items():
        data = {**base, **change, "name": name}
        path = out / "hf-models" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        report = run(load_recipe(path), output=out, quiet=True)
        t = Table(title=f"{name} ({report['run_seconds']:.0f} s): test split, {report['models'][0]['tokens']:,} bytes")
        for c in ("model", "params", "file", "test bits/byte", "agreement", "tok/s @1 thread", "TTFT p50 ms"):
            t.add_column(c, justify="left" if c == "model" else "right")
        first = {}  # sha256 -> the first model holding that file (the name its generation rows carry)
        for m in report["models"]:
            first.setdefault(m["sha256"], m["name"])
        bench = {r["model"]: r for r in report["bench"] if r["threads"] == 1}
        for m in report["models"]:
            b = bench.get(first[m["sha256"]])
            t.add_row(m["name"], f"{m['params']:,}" if m["params"] else "", f"{m['size_bytes'] / 1e3:.0f} kB",
                      f"{m['bits_per_byte']:.4f}", f"{m['agreement']:.1%}", f"{b['tokens_per_s']:.0f}" if b else "",
                      f"{b['ttft_ms']['p50']:.2f}" if b else "")
        console.print(t)
        exports = [m for m in report["models"] if m["role"] == "stage" and m["name"].endswith("_export")]
        console.print("export parity (max |torch - onnxruntime| logits, full / KV cache): " + ", ".join(
            f"{m['name']} {m['info']['max_abs_logits_full']:.1e} / {m['info']['max_abs_logits_kv_cache']:.1e}"
            for m in exports))
        # every distinct file once (an export equals the file of the stage before it, the final its last stage's)
        files |= {f"{name}/{n}": Path(next(m["path"] for m in report["models"] if m["name"] == n))
                  for n in dict.fromkeys(first.values())}
        if name == "tiny-lm":
            ref = f"{name}/{first[student(report['models'])['sha256']]}"  # the fp32 student of the shipped recipe

    from compress.lm.data import eval_windows, load_text
    from compress.lm.onnx import bench_generation

    b = load_recipe(path).bench
    windows = eval_windows(load_text(load_recipe(path).data, base["seed"]).test, ctx, 4096)
    rows = bench_generation(dict(sorted(files.items(), key=lambda kv: kv[0].split("/")[1])), windows[:1, :b.prompt],
                            b.new_tokens, threads=[1], rounds=b.rounds, calls=b.calls)
    ref_row = next(r for r in rows if r["model"] == ref)
    t = Table(title=f"every ONNX file, 1 thread, {b.rounds} interleaved rounds, prompt {b.prompt}, {b.new_tokens} new tokens")
    for c in ("file", "size", "decode tok/s", f"vs {ref} (fp32 student)", "decode p50 / p90 ms", "TTFT p50 ms"):
        t.add_column(c, justify="left" if c == "file" else "right")
    for r in rows:
        t.add_row(r["model"], f"{r['size_bytes'] / 1e3:.0f} kB", f"{r['tokens_per_s']:.0f}",
                  f"{r['tokens_per_s'] / ref_row['tokens_per_s']:.2f}x",
                  f"{r['decode_ms']['p50']:.2f} / {r['decode_ms']['p90']:.2f}", f"{r['ttft_ms']['p50']:.2f}")
    console.print(t)


if __name__ == "__main__":
    main()
