"""Data-parallel training under torchrun: 2 processes reach the accuracy of 1, and only rank 0 writes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

RECIPE = {
    "name": "ddp",
    "seed": 0,
    "teacher": {"model": {"arch": "mlp", "width": 64, "depth": 1}, "train": {"epochs": 8, "lr": 0.003}},
    "student": {"model": {"arch": "mlp", "width": 16, "depth": 1}},
    "stages": [{"type": "distill", "epochs": 8}, {"type": "prune", "ratio": 0.25},
               {"type": "finetune", "epochs": 2, "distill": True}, {"type": "export"}],
    "baseline": "none",
    "bench": {"rounds": 3, "calls": 2},
}


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    reports = {}
    for nproc in (1, 2):
        out = tmp_path / f"n{nproc}"
        done = subprocess.run([sys.executable, "-m", "compress", "run", str(recipe), "--output", str(out),
                               "--quiet", "--nproc", str(nproc)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        reports[nproc] = json.loads((out / "ddp" / "report.json").read_text())
        # rank 0 alone wrote: one cache entry per stage, no temporary leftovers, one report
        entries = [p for p in (out / ".cache" / "stages").iterdir()]
        assert len(entries) == len(RECIPE["stages"]) and not any(p.name.startswith(".") for p in entries)
        assert not list(out.rglob("*.tmp"))
    one, two = ({m["name"]: m for m in reports[n]["models"]} for n in (1, 2))
    # Same global batch and steps; per-rank BatchNorm statistics make the runs differ slightly.
    for name in ("teacher", "01_distill", "final"):
        assert abs(one[name]["accuracy"] - two[name]["accuracy"]) <= 0.03, name
    assert one["final"]["params"] == two["final"]["params"]
