"""Quantization on the default recipe's student and teacher: ours vs onnxruntime's defaults, calibration, INT4.

    python -m compress recipes/digits.yaml --output /tmp/qb      # once: the run whose files are measured
    python benchmarks/quantize.py [--dir /tmp/qb/digits] [--rounds 40] [--calls 20]

Prints markdown tables:
1. per model (the pruned + fine-tuned student ``stages/04_export.onnx`` and ``teacher.onnx``): fp32, our
   plain static INT8 (the recipe's settings), our accuracy-aware INT8 (max_accuracy_drop 0.005), and
   onnxruntime's ``quantize_static`` with default settings on the same 256 calibration samples: test
   accuracy, p50/p90 at batch 1 on one thread, size, and the p50 ratio to ORT's default file, all files of
   a model timed in the same interleaved rounds (``compress.bench.time_interleaved``), each file through 3
   sessions (the median of their p50s);
2. calibration minmax / entropy / percentile x 64 / 256 / 1024 samples: test accuracy of our static INT8;
3. INT4 (MatMulNBits) accuracy_level 0/1/2/4 x block size 32/128 on an MLP with 512-wide linear layers
   trained here, beside its fp32 file, our static INT8 and our mixed INT4/INT8 file, timed interleaved.
Test accuracy is read off each file; no choice here looks at the test split.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compress.artifact import Artifact  # noqa: E402
from compress.bench import cpu_info, time_interleaved  # noqa: E402
from compress.context import Context  # noqa: E402
from compress.data import load_data  # noqa: E402
from compress.quantization.backend import Reader  # noqa: E402
from compress.recipe import load_recipe  # noqa: E402
from compress.runtimes.onnxruntime import load, session  # noqa: E402
from compress.stages.quantize import QuantizeConfig, quantize  # noqa: E402


def acc(path, data) -> float:
    return float((load(path, threads=1).predict(data.x).argmax(1) == data.y).mean())


SESSIONS = 3  # sessions per file: two sessions of one file have timed up to 12 % apart in the same rounds here


def timed(files: dict[str, Path], x1: np.ndarray, rounds: int, calls: int) -> dict:
    """p50/p90 per file: the median over ``SESSIONS`` onnxruntime sessions of the file, all sessions of all files
    in the same interleaved rounds (a session's memory placement shifts its speed; one session per file is not
    enough to call a few per cent)."""
    runners = {}
    for name, p in files.items():
        for k in range(SESSIONS):
            s = session(p, threads=1)
            runners[(name, k)] = (lambda s=s, feed={s.get_inputs()[0].name: np.ascontiguousarray(x1)}: s.run(None, feed))
    t = time_interleaved(runners, rounds=rounds, calls=calls)
    return {n: {q: float(np.median([t[(n, k)].as_dict()[q] for k in range(SESSIONS)])) for q in ("p50", "p90")}
            for n in files}


def table(columns, rows) -> str:
    return "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
                     + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def ort_default(src: Path, dst: Path, x_train: np.ndarray, seed: int) -> Path:
    """onnxruntime's quantize_static with default settings (QDQ, per-tensor, S8S8, minmax), same samples as ours."""
    import onnx
    from onnxruntime.quantization import quantize_static

    name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    quantize_static(str(src), str(dst), Reader(x_train, name, 256, 32, seed))
    return dst


def compare(label: str, src: Path, recipe, splits, work: Path, rounds: int, calls: int) -> str:
    ctx = Context(recipe=recipe, splits=splits, teacher=None, out_dir=work / label, quiet=True)
    art = Artifact("export", "onnx", path=src, info={"formats": ["onnx"]})
    files = {"fp32": src}
    notes = {}
    with contextlib.redirect_stdout(io.StringIO()):
        ctx.stage_index = 0
        files["ours: static INT8 (plain)"] = quantize(art, QuantizeConfig(type="quantize"), ctx).path
        ctx.stage_index = 1
        aware = quantize(art, QuantizeConfig(type="quantize", max_accuracy_drop=0.005), ctx)
        files["ours: static INT8, max_accuracy_drop 0.005"] = aware.path
        notes["aware"] = f"{len(aware.info['fp32_layers'])} layer(s) kept fp32 {aware.info['fp32_layers']}"
        files["ORT quantize_static (defaults)"] = ort_default(src, work / f"{label}_ort_default.onnx", splits.train.x,
                                                              recipe.seed)
    t = timed(files, splits.test.x[:1], rounds, calls)
    ref = t["ORT quantize_static (defaults)"]["p50"]
    rows = []
    for name, p in files.items():
        rows.append([name, f"{acc(p, splits.test):.2%}", f"{acc(p, splits.val):.2%}",
                     f"{t[name]['p50'] * 1e3:.1f} / {t[name]['p90'] * 1e3:.1f}", f"{ref / t[name]['p50']:.2f}x",
                     f"{t['fp32']['p50'] / t[name]['p50']:.2f}x", f"{Path(p).stat().st_size / 1024:.1f} kB"])
    return (f"### {label}: {src}\n\naccuracy-aware: {notes['aware']}\n\n"
            + table(["file", "test acc", "val acc", "p50 / p90 (us)", "speed vs ORT default", "speed vs fp32", "size"], rows))


def calibration(label: str, src: Path, recipe, splits, work: Path) -> list[list[str]]:
    ctx = Context(recipe=recipe, splits=splits, teacher=None, out_dir=work / f"{label}_calib", quiet=True)
    art = Artifact("export", "onnx", path=src, info={"formats": ["onnx"]})
    rows = []
    for method in ("minmax", "entropy", "percentile"):
        row = [label, method]
        for n in (64, 256, 1024):
            with contextlib.redirect_stdout(io.StringIO()):
                out = quantize(art, QuantizeConfig(type="quantize", calibration={"method": method, "samples": n}), ctx)
            row.append(f"{acc(out.path, splits.test):.2%} ({out.info['calibration_samples']})")
        rows.append(row)
    return rows


def int4(recipe, splits, work: Path, rounds: int, calls: int) -> str:
    import torch

    from compress._onnx import export_onnx
    from compress.models import zoo
    from compress.quantization.backend import int4 as write_int4
    from compress.stages.train import cross_entropy
    from compress.training import fit

    torch.manual_seed(0)
    model = fit(zoo.mlp(splits.input_shape, splits.num_classes, width=512, depth=2), splits, epochs=10, lr=1e-3,
                batch_size=64, seed=0, loss_fn=cross_entropy, desc="mlp512", quiet=True).model.eval()
    src = export_onnx(model, splits.input_shape, work / "mlp512.onnx")
    files = {"fp32": src}
    for bs in (32, 128):
        for level in (0, 1, 2, 4):
            p = work / f"mlp512_int4_b{bs}_l{level}.onnx"
            write_int4(src, p, block_size=bs, accuracy_level=level)
            files[f"INT4 block {bs}, accuracy_level {level}"] = p
    ctx = Context(recipe=recipe, splits=splits, teacher=None, out_dir=work / "mlp512", quiet=True)
    art = Artifact("export", "onnx", path=src, info={"formats": ["onnx"]})
    with contextlib.redirect_stdout(io.StringIO()):
        files["ours: static INT8"] = quantize(art, QuantizeConfig(type="quantize"), ctx).path
        ctx.stage_index = 1
        mixed = quantize(art, QuantizeConfig(type="quantize", mode="mixed", accuracy_level=4), ctx)
    n4 = sum(p == "int4" for p in mixed.info["plan"].values())
    files[f"ours: mixed ({n4} INT4 level 4, {len(mixed.info['plan']) - n4} INT8)"] = mixed.path
    t = timed(files, splits.test.x[:1], rounds, calls)
    rows = [[n, f"{acc(p, splits.test):.2%}", f"{t[n]['p50'] * 1e3:.1f} / {t[n]['p90'] * 1e3:.1f}",
             f"{t['fp32']['p50'] / t[n]['p50']:.2f}x", f"{Path(p).stat().st_size / 1024:.1f} kB"] for n, p in files.items()]
    return table(["file (mlp 64-512-512-10)", "test acc", "p50 / p90 (us)", "speed vs fp32", "size"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/qb/digits"), help="a finished run of recipes/digits.yaml")
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "digits.yaml")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()
    student, teacher = args.dir / "stages" / "04_export.onnx", args.dir / "teacher.onnx"
    for f in (student, teacher):
        if not f.is_file():
            sys.exit(f"{f} not found: run  python -m compress {args.recipe} --output {args.dir.parent}  first")
    recipe = load_recipe(args.recipe)
    splits = load_data(recipe.data, recipe.seed)
    c = cpu_info()
    print(f"CPU: {c['model']} ({c['cores']} cores, {', '.join(c['features'])}); batch 1, one thread, "
          f"{args.rounds} interleaved rounds x {args.calls} calls after warm-up\n")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for label, src in (("student", student), ("teacher", teacher)):
            print(compare(label, src, recipe, splits, work, args.rounds, args.calls) + "\n")
        rows = calibration("student", student, recipe, splits, work) + calibration("teacher", teacher, recipe, splits, work)
        print("### Calibration: test accuracy of static INT8 (samples actually used)\n")
        print(table(["model", "method", "64", "256", "1024"], rows) + "\n")
        print("### INT4 weight-only: accuracy_level x block size\n")
        print(int4(recipe, splits, work, args.rounds, args.calls))


if __name__ == "__main__":
    main()
