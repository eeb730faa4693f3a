"""compress.bench and `compress bench`: per-round samples, the same protocol for every file, JSON and table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from compress.bench import Timing, bench_files, peak_rss_bytes, time_interleaved, time_rounds
from compress.cli import cli
from onnx_models import matmul_chain


def test_time_rounds_shape_and_order():
    calls = []
    runners = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    s = time_rounds(runners, rounds=4, calls=3, warmup=1, seed=0)
    assert {k: v.shape for k, v in s.items()} == {"a": (4, 3), "b": (4, 3)}
    assert (s["a"] > 0).all() and s["a"].dtype == np.int64
    timed = calls[2:]  # after one warm-up call each
    # every round runs all calls of one model, then all of the other: blocks of 3
    blocks = [timed[i:i + 3] for i in range(0, len(timed), 3)]
    assert all(len(set(b)) == 1 for b in blocks) and len(blocks) == 8
    t = time_interleaved(runners, rounds=3, calls=2, warmup=0)
    assert isinstance(t["a"], Timing) and t["a"].calls == 6


def test_timing_percentiles_by_hand():
    t = Timing.of([1_000_000] * 9 + [11_000_000])  # nine 1 ms calls and one 11 ms call
    assert t.p50 == 1.0 and t.mean == pytest.approx(2.0) and t.calls == 10 and t.p99 > t.p90 >= 1.0


def test_peak_rss_is_a_byte_count():
    rss = peak_rss_bytes()
    assert rss is None or rss > 1_000_000


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    return matmul_chain(d / "small.onnx"), matmul_chain(d / "big.onnx", dim=256, layers=3)


def test_bench_files_with_and_without_data(files, splits):
    rows = bench_files([("small", files[0], None), ("big", files[1], "ort")], rounds=3, calls=2, batch=8)
    assert [r["name"] for r in rows] == ["small", "big"]
    for r, f in zip(rows, files):
        assert r["runtime"] == "ort" and r["size_bytes"] == f.stat().st_size and r["static_batch"] is None
        assert r["batch"] == 8 and r["latency_ms"]["calls"] == 6 and "accuracy" not in r
    rows = bench_files([("small", files[0], None)], rounds=3, calls=1, x=splits.test.x, y=splits.test.y)
    assert 0 <= rows[0]["accuracy"] <= 1 and rows[0]["errors"] == round((1 - rows[0]["accuracy"]) * len(splits.test.y))


def test_cli_bench_json_table_and_npz(files, tmp_path, splits):
    runner = CliRunner()
    r = runner.invoke(cli, ["bench", str(files[0]), str(files[1]), "--rounds", "3", "--calls", "2", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [m["name"] for m in out["models"]] == ["small.onnx", "big.onnx"] and "cpu" in out
    npz = tmp_path / "d.npz"
    np.savez(npz, x=splits.test.x[:50], y=splits.test.y[:50])
    r = runner.invoke(cli, ["bench", str(files[0]), "--data", str(npz), "--rounds", "3", "--calls", "2",
                            "--batch", "4", "--threads", "0"])
    assert r.exit_code == 0, r.output
    assert "small.onnx" in r.output and "accuracy" in r.output
    bad = tmp_path / "m.bin"
    bad.write_bytes(b"\0")
    r = runner.invoke(cli, ["bench", str(bad)])
    assert r.exit_code == 1 and "no runtime loads '.bin' files" in r.output
    r = runner.invoke(cli, ["bench", str(files[0]), "--runtime", "nope"])
    assert r.exit_code == 2


def test_cli_bench_names_a_language_model_decoder_instead_of_failing(tmp_path):
    """A KV-cache decoder (input_ids + past keys/values) is not a one-input model: a clear error, no traceback."""
    import torch

    from compress.lm.model import GPT, GPTConfig
    from compress.lm.onnx import export_decoder

    torch.manual_seed(0)
    path = export_decoder(GPT(GPTConfig(width=16, layers=1, heads=2, context=16)), tmp_path / "lm.onnx")
    res = CliRunner().invoke(cli, ["bench", str(path)])
    assert res.exit_code == 1
    assert "takes 3 inputs (input_ids, past_key_0, past_value_0, ...): a decoder with a key/value cache" in res.output
    assert "Traceback" not in res.output
