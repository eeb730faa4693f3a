"""Cache and resume: an unchanged rerun redoes nothing, an edit redoes only what follows it, and a run
killed with SIGKILL in the middle of a stage resumes after its last finished stage with the same numbers."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from compress.pipeline import run
from compress.recipe import parse_recipe

RECIPE = {
    "name": "resume",
    "seed": 3,
    "teacher": {"model": {"arch": "cnn", "width": 8, "depth": 2}, "train": {"epochs": 2}},
    "student": {"model": {"arch": "cnn", "width": 4, "depth": 2}},
    "stages": [
        {"type": "distill", "epochs": 2},
        {"type": "finetune", "epochs": 40, "distill": True},  # long enough to be killed in the middle
        {"type": "prune", "ratio": 0.25},
        {"type": "export", "format": ["onnx", "ort"]},
        {"type": "quantize", "mode": "int8_static"},
    ],
    "bench": {"rounds": 3, "calls": 2},
}


def numbers(report: dict) -> list[tuple]:
    return [(m["name"], m["errors"], m["accuracy"], m["params"], m["size_bytes"]) for m in report["models"]]


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_rerun_reuses_everything_and_edits_redo_only_what_follows(tmp_path):
    first = run(parse_recipe(RECIPE), output=tmp_path, quiet=True)
    assert not any(s["cached"] for s in first["stages"])
    again = run(parse_recipe(RECIPE), output=tmp_path, quiet=True)
    assert all(s["cached"] for s in again["stages"])
    assert numbers(again) == numbers(first)
    timed = ("accuracy", "errors", "agreement", "size_bytes", "latency_ms", "latency_batch_ms")
    assert [{k: m[k] for k in timed} for m in again["models"]] == [{k: m[k] for k in timed} for m in first["models"]]
    assert again["models"][0]["info"]["cached"] is True  # measurements reused, nothing redone

    edited = {**RECIPE, "stages": RECIPE["stages"][:-1] + [{"type": "quantize", "mode": "int8_dynamic"}]}
    third = run(parse_recipe(edited), output=tmp_path, quiet=True)
    assert [s["cached"] for s in third["stages"]] == [True, True, True, True, False]

    forced = run(parse_recipe(RECIPE), output=tmp_path, quiet=True, force=True)
    assert not any(s["cached"] for s in forced["stages"])
    assert numbers(forced) == numbers(first)  # training is deterministic: same numbers from scratch


@pytest.mark.slow
def test_sigkill_mid_stage_resumes_with_the_same_numbers(tmp_path):
    recipe = tmp_path / "resume.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "baseline": "none"}))  # the scratch baseline is not under test here

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "compress", "run", str(recipe), "--output", str(out), "--quiet"]

    # The reference runs in a subprocess too: same thread count, so the same float reductions.
    done = subprocess.run(command(tmp_path / "reference"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    reference = json.loads((tmp_path / "reference" / "resume" / "report.json").read_text())

    out = tmp_path / "killed"
    cmd = command(out)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    stages = out / ".cache" / "stages"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if stages.exists() and sum(1 for p in stages.iterdir() if not p.name.startswith(".")) >= 1:
            break  # distill is done; finetune (40 epochs) is running
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    time.sleep(0.5)  # well inside the finetune stage
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "resume" / "report.json").exists()
    assert not list(out.rglob("*.tmp")), "a killed run must not leave half-written files"

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    report = json.loads((out / "resume" / "report.json").read_text())
    assert [s["cached"] for s in report["stages"]] == [True, False, False, False, False]
    assert numbers(report) == numbers(reference)
    for a, b in zip(report["models"], reference["models"]):  # bit-identical model files
        if a["role"] != "teacher" and a["path"].endswith(".onnx"):
            assert digest(a["path"]) == digest(b["path"]), a["name"]


def test_second_run_on_the_same_output_fails_clearly(tmp_path):
    import fcntl

    from compress.errors import CompressError

    folder = tmp_path / "resume"
    folder.mkdir()
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(CompressError, match="another compress run is writing to"):
            run(parse_recipe(RECIPE), output=tmp_path, quiet=True)
