"""The Pareto search on the default recipe: frontier size and search time, cold cache then warm.

    python benchmarks/search.py [--recipe recipes/digits.yaml] [--ratios 0.2,0.3,0.5]
                                [--modes int8_static,int8_dynamic,int4_weight_only] [--output DIR]

Runs ``compress search`` twice into one fresh output root (a temporary folder unless --output is
given; it must not hold a cache yet): first cold (teacher, scratch student and every stage computed),
then again with everything cached. Prints one table (variants, frontier size, build / measurement /
total seconds) and the frontier of the cold run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(Path(__file__).parents[1] / "recipes" / "digits.yaml"))
    ap.add_argument("--ratios", default="0.2,0.3,0.5")
    ap.add_argument("--modes", default="int8_static,int8_dynamic,int4_weight_only")
    ap.add_argument("--widths", default=None)
    ap.add_argument("--output", default=None, help="output root (default: a new temporary folder)")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from compress.recipe import load_recipe
    from compress.search import search

    root = Path(args.output or tempfile.mkdtemp(prefix="compress-search-bench-"))
    if (root / ".cache").exists():
        raise SystemExit(f"{root} already holds a cache; the cold run needs a fresh --output")
    recipe = load_recipe(args.recipe)
    runs = {}
    for name in ("cold", "warm"):
        t0 = time.perf_counter()
        result = search(recipe, root, ratios=[args.ratios], modes=[args.modes],
                        widths=[args.widths] if args.widths else None, quiet=True)
        wall = time.perf_counter() - t0
        runs[name] = (result, wall)
        print(f"{name}: {result['variants_run']} variants in {wall:.0f} s", flush=True)

    console = Console(width=160)
    table = Table(title=f"compress search {Path(args.recipe).name}: ratios {args.ratios} x modes {args.modes}")
    for col in ("cache", "variants", "frontier size", "stages computed", "build s", "measure s", "search s"):
        table.add_column(col, justify="left" if col == "cache" else "right")
    for name, (r, wall) in runs.items():
        computed = sum(not s["cached"] for c in r["candidates"] for s in c["stages"])
        total = sum(len(c["stages"]) for c in r["candidates"])
        table.add_row(name, str(r["variants_run"]), str(len(r["frontier"])), f"{computed}/{total}",
                      f"{r['build_seconds']:.1f}", f"{r['measure_seconds']:.1f}", f"{wall:.1f}")
    console.print(table)

    cold = runs["cold"][0]
    front = Table(title="the frontier (cold run): test accuracy, p50 at batch 1 / 1 thread, file size")
    for col in ("candidate", "test acc", "val acc", "p50 b1 us", "size kB", "note"):
        front.add_column(col, justify="left" if col in ("candidate", "note") else "right")
    rows = sorted(cold["candidates"], key=lambda c: c["latency_ms"]["p50"])
    for c in rows + cold["references"]:
        if c in rows and not c["frontier"]:
            continue
        note = c.get("role") or ("the recipe's own" if c.get("recipe") else "")
        front.add_row(c["name"], f"{c['accuracy']:.2%}", f"{c['val_accuracy']:.2%}",
                      f"{c['latency_ms']['p50'] * 1e3:.1f}", f"{c['size_bytes'] / 1e3:.1f}", note)
    console.print(front)
    print(f"files: {cold['files']['md']}")


if __name__ == "__main__":
    main()
