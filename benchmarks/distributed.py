"""Scale-out on one machine: a grid search by 1 worker vs 2 workers sharing a sqlite study, and training in 1
process vs 1 node x 2 processes vs 2 torchrun "nodes".

    python benchmarks/distributed.py [--recipe recipes/digits.yaml] [--ratios 0.2,0.3,0.5]
                                     [--modes int8_static,int8_dynamic] [--part search|train|all] [--output DIR]

Search (the default axes give 6 variants; the recipe's own is r0.2-int8_static): each configuration starts cold
(a fresh output root and cache), its workers started together with ``compress search --storage
sqlite:///<root>/search.db``; 1 worker with 2 threads vs 2 workers with 1 thread each (OMP_NUM_THREADS). Wall
time is from the start to the last worker's exit. Then ``--report`` measures each configuration's candidates,
teacher and scratch student in one interleaved session. Printed: wall time, speed-up, the variants each worker
built (and whether any was built twice: the study's trials by stage-key digest), the frontier, and whether
the files measured are the ones the workers recorded (sha256) and the same files in both configurations.

Training (``compress run``, cold): 1 process (all cores), ``--nproc 2`` (one node, 2 processes), and two torchrun
"nodes" of 1 process each with docs/distributed.md's cluster command on 127.0.0.1, each pinned to its own core
(taskset) as two 1-core machines would be. Printed: wall time, training seconds, teacher and final accuracy.

Run it on an otherwise idle machine: other processes distort every wall time here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# docs/distributed.md's cluster command (tests/test_distributed.py runs the same template).
CLUSTER = ("torchrun --nnodes {nnodes} --node_rank {node_rank} --nproc_per_node {nproc_per_node} "
           "--master_addr {head} --master_port {port} -m compress run {recipe} --output {output}")
TRAINS = ("train", "distill", "finetune", "qat")


def _env(threads: int | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    return {**env, "OMP_NUM_THREADS": str(threads)} if threads else env


def search_config(args, out: Path, workers: int, threads: int) -> dict:
    import optuna

    from compress.cache import sha256_file
    from compress.recipe import load_recipe
    from compress.search import open_storage

    root = out / f"search-{workers}w"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    url = f"sqlite:///{root}/search.db"
    cmd = [sys.executable, "-m", "compress", "search", args.recipe, "-o", str(root), "--ratios", args.ratios,
           "--modes", args.modes, "--storage", url, "--quiet"]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, env=_env(threads), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(workers)]
    errs = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise SystemExit(f"a worker failed:\n{''.join(errs)[-3000:]}")
    report = subprocess.run(cmd + ["--report"], env=_env(threads * workers), capture_output=True, text=True)
    if report.returncode:
        raise SystemExit(f"--report failed:\n{report.stderr[-3000:]}")
    name = load_recipe(args.recipe).name
    result = json.loads((root / name / "search" / "search.json").read_text())
    trials = optuna.load_study(study_name=name, storage=open_storage(url).storage).get_trials()
    built = [t for t in trials if t.user_attrs.get("built")]
    by_worker: dict[str, list[str]] = {}
    for t in built:
        by_worker.setdefault(t.user_attrs["worker"], []).append(t.user_attrs["variant"])
    keys = [t.user_attrs["key"] for t in built]
    recorded = {t.user_attrs["variant"]: t.user_attrs["entry"]["sha256"] for t in built}
    measured = {c["name"]: sha256_file(c["path"]) for c in result["candidates"]}
    return {"workers": workers, "threads": threads, "wall": wall, "by_worker": by_worker,
            "twice": len(keys) - len(set(keys)), "result": result, "measured": measured,
            "recorded_match": measured == recorded}


def train_config(args, out: Path, label: str) -> dict:
    root = out / ("train-" + label.replace(" ", ""))  # no spaces: the cluster command is split on them
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    base = [sys.executable, "-m", "compress", "run", args.recipe, "--output", str(root), "--quiet"]
    t0 = time.perf_counter()
    if label == "1 process":
        codes = [subprocess.run(base, env=_env(None)).returncode]
    elif label == "1 node x 2":
        codes = [subprocess.run(base + ["--nproc", "2"], env=_env(None)).returncode]
    else:  # two nodes of one process, each pinned to its own core as two 1-core machines would be
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cores = sorted(os.sched_getaffinity(0))
        procs = []
        for rank in (0, 1):
            cmd = CLUSTER.format(nnodes=2, node_rank=rank, nproc_per_node=1, head="127.0.0.1", port=port,
                                 recipe=args.recipe, output=root).split() + ["--quiet"]
            pin = ["taskset", "-c", str(cores[rank % len(cores)])] if shutil.which("taskset") and len(cores) > 1 else []
            procs.append(subprocess.Popen(pin + [sys.executable, "-m", "torch.distributed.run", *cmd[1:]],
                                          env=_env(None), stdout=subprocess.DEVNULL))
        codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    if any(codes):
        raise SystemExit(f"training ({label}) failed: exit codes {codes}")
    name = next(p for p in root.iterdir() if (p / "report.json").exists())
    report = json.loads((name / "report.json").read_text())
    models = {m["name"]: m for m in report["models"]}
    train_s = sum(s["seconds"] for s in report["stages"] if s["type"] in TRAINS)
    train_s += float((models["teacher"].get("info") or {}).get("seconds") or 0)
    return {"label": label, "wall": wall, "train": train_s, "teacher": models["teacher"]["accuracy"],
            "final": models["final"]["accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "digits.yaml"))
    ap.add_argument("--ratios", default="0.2,0.3,0.5")
    ap.add_argument("--modes", default="int8_static,int8_dynamic")
    ap.add_argument("--part", choices=["search", "train", "all"], default="all")
    ap.add_argument("--output", default=None, help="output root (default: a new temporary folder)")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    out = Path(args.output or tempfile.mkdtemp(prefix="compress-distributed-bench-"))
    console = Console(width=170)
    cores = len(os.sched_getaffinity(0))
    if args.part in ("search", "all"):
        runs = []
        for workers, threads in ((1, cores), (2, max(1, cores // 2))):
            runs.append(search_config(args, out, workers, threads))
            print(f"search, {workers} worker(s): {runs[-1]['wall']:.0f} s", flush=True)
        table = Table(title=f"compress search {Path(args.recipe).name}: ratios {args.ratios} x modes {args.modes}, "
                            f"cold, {cores} cores, one sqlite study")
        for col in ("workers", "threads each", "wall s", "speed-up", "variants built per worker", "built twice",
                    "frontier", "measured = recorded files"):
            table.add_column(col, justify="left" if col.startswith(("variants", "frontier")) else "right")
        for r in runs:
            per = "; ".join(f"{len(v)}: {', '.join(v)}" for v in r["by_worker"].values())
            table.add_row(str(r["workers"]), str(r["threads"]), f"{r['wall']:.0f}", f"{runs[0]['wall'] / r['wall']:.2f}x",
                          per, str(r["twice"]), ", ".join(r["result"]["frontier"]), "yes" if r["recorded_match"] else "NO")
        console.print(table)
        same = runs[0]["measured"] == runs[1]["measured"]
        print(f"the same files (sha256) from 1 and 2 workers: {'yes' if same else 'no'}"
              + ("" if same else " (a different thread count changes float summation order in training)"))
        last = runs[-1]["result"]
        front = Table(title="the frontier, 2 workers (one interleaved session by --report)")
        for col in ("candidate", "test acc", "val acc", "p50 b1 us", "size kB", "sha256", "built by"):
            front.add_column(col, justify="left" if col in ("candidate", "sha256", "built by") else "right")
        for c in sorted(last["candidates"], key=lambda c: c["latency_ms"]["p50"]):
            if c["frontier"]:
                front.add_row(c["name"], f"{c['accuracy']:.2%}", f"{c['val_accuracy']:.2%}",
                              f"{c['latency_ms']['p50'] * 1e3:.1f}", f"{c['size_bytes'] / 1e3:.1f}",
                              runs[-1]["measured"][c["name"]][:12], c.get("built_by") or "")
        console.print(front)
    if args.part in ("train", "all"):
        rows = []
        for label in ("1 process", "1 node x 2", "2 nodes x 1"):
            rows.append(train_config(args, out, label))
            print(f"training, {label}: {rows[-1]['wall']:.0f} s", flush=True)
        table = Table(title=f"compress run {Path(args.recipe).name}, cold: one process vs torchrun ({cores} cores)")
        for col in ("layout", "wall s", "training s", "speed-up (wall)", "teacher acc", "final acc"):
            table.add_column(col, justify="left" if col == "layout" else "right")
        for r in rows:
            table.add_row(r["label"], f"{r['wall']:.0f}", f"{r['train']:.0f}", f"{rows[0]['wall'] / r['wall']:.2f}x",
                          f"{r['teacher']:.2%}", f"{r['final']:.2%}")
        console.print(table)
    print(f"outputs: {out}")


if __name__ == "__main__":
    main()
