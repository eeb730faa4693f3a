"""The architecture matrix as a benchmark: one fixed recipe per architecture on 32 x 32 RGB digits.

    python benchmarks/architectures.py [--output exported/architectures] [--archs resnet vit ...] [--quick]
                                       [--json exported/architectures/architectures.json]

Data: the built-in digits (1,797 8 x 8 grey images, ``compress.data._digits``) resized to 32 x 32 (bilinear),
written as RGB PNGs into ``<output>/digits32/<class>/`` and read back with
``data: {source: imagefolder, path: ..., image_size: 32}``: the path a user with an image folder takes.
Teacher: a ResNet of basic blocks (``tests/archs.py:resnet``, 32-64-128 channels, one block per stage, 10 epochs),
trained here once and shared by every recipe (the cache under ``<output>/.cache``). Student: each architecture of
``tests/archs.py`` at its default size. Chain: distill (15 epochs, T 4, alpha 0.5), prune (ratio 0.3, round_to 8),
finetune (5 epochs, distill), export (every installed format), quantize (int8_static). ``compress.run`` also
trains the scratch student with the same epoch budget (20 epochs) and measures every file.

Prints three markdown tables: (1) test accuracy of the teacher, the scratch student, the distilled, pruned and
final (INT8) student, the final/teacher accuracy ratio (target >= 97 %), at-chance flags, and the size ratio
(teacher .onnx bytes / final .onnx bytes); (2) batch-1 (1 thread) and batch-64 (all threads) speed-ups of the
final file in every runtime over the teacher's .onnx (onnxruntime), the report's ``runtimes`` rows; (3) seconds
per stage and for the whole run. ``--quick`` is a smoke run (1-2 epochs, onnx and ort only, few timing rounds).
Measured on a shared 2-core machine: compare speed-ups within one run only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # archs.py: the factories the recipes name

ARCHS = ["resnet", "mobilenet_v2", "mobilenet_v3", "efficientnet", "vit"]
RUNTIME_LABEL = {"ort": "onnx", "ort-mobile": "ort", "executorch": "pte", "litert": "tflite"}


def write_image_folder(folder: Path, size: int = 32) -> Path:
    """The digits as ``folder/<class>/<index>.png``, 32 x 32 RGB (grey repeated), bilinear from 8 x 8."""
    from PIL import Image

    from compress.data import _digits

    if folder.is_dir() and sum(1 for _ in folder.rglob("*.png")) == 1797:
        return folder
    x, y = _digits()  # (N, 1, 8, 8) in [0, 1]
    for i, (img, label) in enumerate(zip(x, y)):
        grey = Image.fromarray(np.round(img[0] * 255).astype(np.uint8), mode="L").resize((size, size), Image.BILINEAR)
        d = folder / str(int(label))
        d.mkdir(parents=True, exist_ok=True)
        grey.convert("RGB").save(d / f"{i:04d}.png")
    return folder


def recipe_for(arch: str, images: Path, quick: bool, formats) -> dict:
    e = (lambda full, q: q if quick else full)  # noqa: E731
    return {
        "name": f"arch-{arch}",
        "seed": 0,
        "data": {"source": "imagefolder", "path": str(images), "image_size": 32, "split": {"val": 0.2, "test": 0.2}},
        "teacher": {"model": {"factory": "archs:resnet", "kwargs": {"num_classes": 10, "width": 32}},
                    "train": {"epochs": e(10, 2), "lr": 0.003}},
        "student": {"model": {"factory": f"archs:{arch}", "kwargs": {"num_classes": 10, "in_channels": 3, "image_size": 32}}},
        "stages": [
            {"type": "distill", "epochs": e(15, 1), "temperature": 4, "alpha": 0.5},  # lr 0.003, best val epoch
            {"type": "prune", "ratio": 0.3},
            {"type": "finetune", "epochs": e(5, 1), "distill": True},
            {"type": "export", "format": formats},
            {"type": "quantize", "mode": "int8_static"},
        ],
        "bench": {"batch": 64, "rounds": e(15, 3), "calls": e(10, 2)},
    }


def summarize(arch: str, report: dict, seconds: float) -> dict:
    models = {m["name"]: m for m in report["models"]}
    acc = {k: models[k]["accuracy"] for k in ("teacher", "scratch", "01_distill", "02_prune", "final")}
    chance = {k: bool(models[k].get("at_chance")) for k in acc}
    rows = report.get("runtimes") or []
    teacher = next(r for r in rows if r["model"] == "teacher" and r["runtime"] == "ort")
    speed = {}
    for r in rows:
        if r["model"] == "final":
            speed[RUNTIME_LABEL.get(r["runtime"], r["runtime"])] = (
                teacher["latency_ms"]["p50"] / r["latency_ms"]["p50"],
                teacher["latency_batch_ms"]["p50"] / r["latency_batch_ms"]["p50"])
    prune_rows = models["02_prune"]["info"]["layers"]
    return {"arch": arch, "accuracy": acc, "at_chance": chance, "chance_threshold": report.get("chance", {}).get("threshold"),
            "final_vs_teacher": acc["final"] / acc["teacher"],
            "size_ratio": report["summary"]["final_vs_teacher"]["size_ratio"],
            "params": {"student": models["01_distill"].get("params"), "pruned": models["02_prune"].get("params")},
            "speedup": speed, "stages": {f"{s['index']}. {s['type']}": s["seconds"] for s in report["stages"]},
            "run_seconds": seconds, "deeper_than_asked": [r["layer"] for r in prune_rows if r.get("deeper_than_asked")],
            "notes": report["notes"]}


def tables(results: list[dict]) -> str:
    out = ["| architecture | teacher | scratch | distilled | pruned | final (INT8) | final / teacher | size ratio |",
           "|---|---|---|---|---|---|---|---|"]
    for r in results:
        a, c = r["accuracy"], r["at_chance"]
        cell = lambda k: f"{a[k]:.2%}" + (" (AT CHANCE)" if c[k] else "")  # noqa: E731
        out.append(f"| {r['arch']} | {cell('teacher')} | {cell('scratch')} | {cell('01_distill')} | {cell('02_prune')} | "
                   f"{cell('final')} | {r['final_vs_teacher']:.1%} | {r['size_ratio']:.1f}x |")
    runtimes = [k for k in ("onnx", "ort", "pte", "tflite") if any(k in r["speedup"] for r in results)]
    out += ["", "Speed-up of the final (INT8) file over the teacher's .onnx (onnxruntime), p50: batch 1 on 1 thread / "
                "batch 64 on all threads", "",
            "| architecture | " + " | ".join(runtimes) + " |", "|---|" + "---|" * len(runtimes)]
    for r in results:
        out.append(f"| {r['arch']} | " + " | ".join(
            f"{r['speedup'][k][0]:.2f}x / {r['speedup'][k][1]:.2f}x" if k in r["speedup"] else "-" for k in runtimes) + " |")
    stages = list(results[0]["stages"]) if results else []
    out += ["", "Seconds per stage (the run also trains the teacher, once, and the scratch student, and measures every file)",
            "", "| architecture | " + " | ".join(stages) + " | whole run |", "|---|" + "---|" * (len(stages) + 1)]
    for r in results:
        cells = " | ".join(f"{r['stages'].get(s, '-')}" for s in stages)
        out.append(f"| {r['arch']} | {cells} | {r['run_seconds']:.0f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="exported/architectures")
    ap.add_argument("--archs", nargs="+", default=ARCHS, choices=ARCHS)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1-2 epochs, onnx and ort only, few timing rounds")
    ap.add_argument("--json", default=None, help="default: <output>/architectures.json")
    args = ap.parse_args()

    import torch

    import compress
    from compress.recipe import parse_recipe

    torch.set_num_threads(1)  # small models on 2 shared cores: intra-op threads only add contention
    out = Path(args.output)
    images = write_image_folder(out / "digits32")
    formats = ["onnx", "ort"] if args.quick else "all"
    results = []
    for arch in args.archs:
        recipe = parse_recipe(recipe_for(arch, images, args.quick, formats))
        t0 = time.perf_counter()
        report = compress.run(recipe, output=out, quiet=True)
        results.append(summarize(arch, report, time.perf_counter() - t0))
        r = results[-1]
        print(f"{arch}: {r['run_seconds']:.0f} s, final {r['accuracy']['final']:.2%} "
              f"({r['final_vs_teacher']:.1%} of the teacher's {r['accuracy']['teacher']:.2%})", file=sys.stderr)
    print(tables(results))
    for r in results:
        if r["final_vs_teacher"] < 0.97:
            print(f"\n{r['arch']}: the final model keeps {r['final_vs_teacher']:.1%} of the teacher's accuracy, "
                  f"{0.97 - r['final_vs_teacher']:.1%} short of the 97 % target.")
    path = Path(args.json or out / "architectures.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
