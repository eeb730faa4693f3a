"""The default recipe's final student and teacher on every installed runtime, and the CI gate's error rates.

    python benchmarks/runtimes.py [--dir exported/digits] [--json exported/runtimes.json]

Needs a finished run of recipes/digits.yaml (``compress recipes/digits.yaml``): the teacher comes from
that run's cache and is written in every format here; the final model files are the run's own.
Prints two markdown tables: (1) size and p50/p90 at batch 1 on 1 thread and at batch 64 on all
threads, every file of one setting timed in the same interleaved rounds; (2) the gate: false alarms
over 20 reruns of the unchanged final model, and the detection rate of deliberate slowdowns (a side
chain of MatMuls on the input, multiplied by zero and added to the logits: same outputs, more work).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compress import check as gate  # noqa: E402
from compress.bench import bench_files, cpu_info  # noqa: E402

SUFFIX = {"onnx": ".onnx", "ort": ".ort", "executorch": ".pte", "litert": ".tflite"}


def teacher_files(recipe_path: Path, run_dir: Path, out: Path) -> dict[str, Path]:
    """The run's teacher (from its cache) written in every installed format."""
    from compress._onnx import convert_to_ort
    from compress.cache import Cache, cache_key
    from compress.pipeline import prepare
    from compress.recipe import load_recipe
    from compress.stages.export import installed_formats, write_runtime_file

    recipe = load_recipe(recipe_path)
    prep = prepare(recipe)
    t = recipe.teacher.train
    key = cache_key("teacher", recipe.teacher.model.model_dump(), t.model_dump(), recipe.seed, prep.splits.fingerprint)
    teacher = Cache(run_dir.parent / ".cache").get_weights("weights", key, prep.teacher)
    if teacher is None:
        raise SystemExit(f"no cached teacher {key} under {run_dir.parent / '.cache'}: run `compress {recipe_path}` first")
    files = {"onnx": run_dir / "teacher.onnx"}
    for fmt in installed_formats():
        if fmt == "ort":
            files["ort"] = convert_to_ort(files["onnx"], out / "teacher.ort")
        elif fmt != "onnx":
            files[fmt] = write_runtime_file(fmt, teacher, prep.splits.input_shape, out / f"teacher{SUFFIX[fmt]}")
    return files


def runtime_table(run_dir: Path, teacher: dict[str, Path], x: np.ndarray, rounds: int) -> list[dict]:
    final = {fmt: run_dir / f"model{s}" for fmt, s in SUFFIX.items() if (run_dir / f"model{s}").exists()}
    files = [(f"teacher {fmt}", p, None) for fmt, p in teacher.items()] + [(f"final {fmt}", p, None) for fmt, p in final.items()]
    one = bench_files(files, threads=1, batch=1, x=x, rounds=rounds, calls=20)
    big = bench_files(files, threads=0, batch=64, x=x, rounds=rounds, calls=5, warmup=3, seed=1)
    rows = []
    for a, b in zip(one, big):
        rows.append({"file": a["name"], "runtime": a["runtime"], "size_bytes": a["size_bytes"],
                     "static_batch": a["static_batch"], "threads_batch1": a["threads"], "b1": a["latency_ms"],
                     "b64": b["latency_ms"]})
    return rows


def slowed(src: Path, dst: Path, n: int, dim: int) -> Path:
    """``src`` plus ``n`` MatMuls of ``dim`` x ``dim`` on the flattened input, times zero, added to the logits."""
    m = onnx.load(str(src))
    g = m.graph
    rng = np.random.default_rng(0)
    inp, out = g.input[0].name, g.output[0].name
    feat = int(np.prod([d.dim_value for d in g.input[0].type.tensor_type.shape.dim[1:]]))
    # rename the old output so the new Add can produce the graph's output name
    for node in g.node:
        node.output[:] = [o + "_pre" if o == out else o for o in node.output]
    inits = [numpy_helper.from_array(rng.normal(0, 0.05, (feat, dim)).astype(np.float32), "slow_in"),
             numpy_helper.from_array(np.zeros((1,), np.float32), "slow_zero")]
    nodes = [helper.make_node("Flatten", [inp], ["slow_f"], axis=1), helper.make_node("MatMul", ["slow_f", "slow_in"], ["slow_0"])]
    for i in range(n):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.05, (dim, dim)).astype(np.float32), f"slow_w{i}"))
        nodes.append(helper.make_node("MatMul", [f"slow_{i}", f"slow_w{i}"], [f"slow_{i + 1}"]))
    nodes += [helper.make_node("ReduceSum", [f"slow_{n}"], ["slow_s"], keepdims=1),
              helper.make_node("Mul", ["slow_s", "slow_zero"], ["slow_z"]),
              helper.make_node("Add", [out + "_pre", "slow_z"], [out])]
    g.node.extend(nodes)
    g.initializer.extend(inits)
    onnx.save(m, str(dst))
    return dst


def gate_stats(run_dir: Path, reruns: int, tmp: Path) -> dict:
    final, teacher = run_dir / "model.onnx", run_dir / "teacher.onnx"
    tol = gate.Tolerances()
    base = gate.baseline_from([gate.measure_files(final, teacher, rounds=30, calls=20, seed=100 + i) for i in range(5)], tol)
    statuses = [gate.compare(gate.measure_files(final, teacher, rounds=30, calls=20, seed=s), base, tol).verdicts[-1].status
                for s in range(reruns)]
    sweep = []
    for n, dim in ((1, 32), (1, 64), (2, 64), (1, 128), (2, 128), (4, 128), (2, 256)):
        path = slowed(final, tmp / f"slow_{n}_{dim}.onnx", n, dim)
        # the true slowdown: the slowed file against the unchanged one, interleaved, many rounds
        true = gate.measure_files(path, final, rounds=40, calls=20)["latency_ratio"]["ratio"]
        verdicts = [gate.compare(gate.measure_files(path, teacher, rounds=30, calls=20, seed=s), base, tol).verdicts[-1].status
                    for s in range(5)]
        sweep.append({"matmuls": n, "dim": dim, "true_slowdown": true, "regressed": verdicts.count("regressed"),
                      "noisy": verdicts.count("noisy"), "trials": len(verdicts)})
    return {"tolerance": tol.latency, "baseline_ratio": base["latency_ratio"], "reruns": reruns,
            "false_alarms": statuses.count("regressed"), "noisy": statuses.count("noisy"), "sweep": sweep}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "digits.yaml")
    ap.add_argument("--dir", type=Path, default=ROOT / "exported" / "digits", help="the recipe's output folder")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--reruns", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from compress.data import load_data
    from compress.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    x = load_data(recipe.data, recipe.seed).test.x
    with tempfile.TemporaryDirectory() as tmp:
        teacher = teacher_files(args.recipe, args.dir, Path(tmp))
        rows = runtime_table(args.dir, teacher, x, args.rounds)
        stats = gate_stats(args.dir, args.reruns, Path(tmp))
    us = lambda t: f"{t['p50'] * 1e3:.1f} / {t['p90'] * 1e3:.1f}"  # noqa: E731
    print(f"CPU: {cpu_info()['model']}, {cpu_info()['cores']} cores\n")
    print("| file | runtime | size | batch 1, 1 thread p50 / p90 (us) | batch 64, all threads p50 / p90 (us) |")
    print("|---|---|---|---|---|")
    for r in rows:
        note = f" (static batch {r['static_batch']}, {r['threads_batch1']} threads)" if r["static_batch"] else ""
        print(f"| {r['file']} | {r['runtime']}{note} | {r['size_bytes']:,} B | {us(r['b1'])} | {us(r['b64'])} |")
    print(f"\nGate (latency tolerance {stats['tolerance']:.0%}, 30 rounds x 20 calls): "
          f"{stats['false_alarms']}/{stats['reruns']} false alarms ({stats['noisy']} 'noisy') on the unchanged model")
    print("\n| added work | true slowdown of the final model | gate fails |\n|---|---|---|")
    for s in stats["sweep"]:
        print(f"| {s['matmuls']} x MatMul {s['dim']} | {s['true_slowdown']:.3f}x | {s['regressed']}/{s['trials']} |")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_info(), "runtimes": rows, "gate": stats}, indent=2))


if __name__ == "__main__":
    main()
