"""Data-parallel training under torchrun: 2 processes on one machine, and 2 "nodes" started with the cluster
command of docs/distributed.md, reach the accuracy of 1 process, and only rank 0 writes."""

from __future__ import annotations

import json
import socket
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

# The cluster command of docs/distributed.md, run on every node with its NODE_RANK; the output root (and so the
# cache) on a filesystem all nodes share. The test fills it in with both "nodes" on this machine.
CLUSTER = ("torchrun --nnodes {nnodes} --node_rank {node_rank} --nproc_per_node {nproc_per_node} "
           "--master_addr {head} --master_port {port} -m compress run {recipe} --output {output}")

TOLERANCE = 0.03  # accuracy: per-rank BatchNorm statistics and reduction order make runs differ slightly


def _written_by_rank_0_only(out) -> dict:
    """One cache entry per stage, no temporary leftovers, one report."""
    entries = list((out / ".cache" / "stages").iterdir())
    assert len(entries) == len(RECIPE["stages"]) and not any(p.name.startswith(".") for p in entries)
    assert not list(out.rglob("*.tmp"))
    return {m["name"]: m for m in json.loads((out / "ddp" / "report.json").read_text())["models"]}


def _matches(one: dict, other: dict) -> None:
    # Same global batch and steps: the same training up to per-rank BatchNorm statistics.
    for name in ("teacher", "01_distill", "final"):
        assert abs(one[name]["accuracy"] - other[name]["accuracy"]) <= TOLERANCE, name
    assert one["final"]["params"] == other["final"]["params"]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp") / "ddp.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return path


def _run(recipe, out, nproc: int) -> dict:
    done = subprocess.run([sys.executable, "-m", "compress", "run", str(recipe), "--output", str(out), "--quiet",
                           "--nproc", str(nproc)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return _written_by_rank_0_only(out)


@pytest.fixture(scope="module")
def one_process(recipe, tmp_path_factory):
    return _run(recipe, tmp_path_factory.mktemp("n1"), 1)


@pytest.mark.slow
def test_two_processes_match_one(recipe, one_process, tmp_path):
    _matches(one_process, _run(recipe, tmp_path / "n2", 2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_match_one(recipe, one_process, tmp_path):
    out, port = tmp_path / "nodes", _free_port()
    nodes = []
    for rank in (0, 1):
        cmd = CLUSTER.format(nnodes=2, node_rank=rank, nproc_per_node=1, head="127.0.0.1", port=port,
                             recipe=recipe, output=out).split()
        assert cmd[0] == "torchrun"  # the console script of torch.distributed.run; this interpreter's, here
        log = open(tmp_path / f"node{rank}.log", "w")
        nodes.append((subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *cmd[1:]], stdout=log,
                                       stderr=subprocess.STDOUT), log))
    codes = []
    for proc, log in nodes:
        try:
            codes.append(proc.wait(timeout=600))
        finally:
            log.close()
            if proc.poll() is None:
                proc.kill()
    logs = [(tmp_path / f"node{rank}.log").read_text()[-3000:] for rank in (0, 1)]
    assert codes == [0, 0], "\n".join(logs)
    _matches(one_process, _written_by_rank_0_only(out))


def test_threads_per_process_counts_the_processes_on_this_node(monkeypatch):
    from compress import distributed

    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv("WORLD_SIZE", "4")  # 2 nodes x 2 processes
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert distributed.threads_per_process() == 4  # 8 cores / 2 processes here, not / 4 in the world
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert distributed.threads_per_process() == 8
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert distributed.threads_per_process() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert distributed.threads_per_process() == 1
