"""compress/lm/onnx.py: ONNX (with KV cache) against torch; INT8 and INT4 files run and are smaller."""

import numpy as np
import onnx
import pytest
import torch

from compress.lm.model import GPT, GPTConfig, generate
from compress.lm.onnx import OrtDecoder, bench_generation, export_decoder, parity, quantize_decoder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    m = GPT(GPTConfig(width=64, layers=2, heads=2, context=32)).eval()
    path = export_decoder(m, tmp_path_factory.mktemp("lm") / "d.onnx")
    return m, path


def test_onnx_matches_torch_with_and_without_kv_cache(exported):
    m, path = exported
    w = np.random.default_rng(0).integers(0, 256, (2, 33))
    par = parity(m, path, w)
    assert par["max_abs_logits_full"] < 1e-4 and par["max_abs_logits_kv_cache"] < 1e-4
    assert par["max_abs_present_key_0"] < 1e-4
    names = [i.name for i in onnx.load(str(path)).graph.input]
    assert names == ["input_ids", "past_key_0", "past_value_0", "past_key_1", "past_value_1"]


def test_ort_greedy_generation_equals_torch(exported):
    m, path = exported
    prompt = np.array([[72, 101, 108, 108, 111]])
    want = generate(m, torch.from_numpy(prompt), 8).numpy()
    assert (OrtDecoder(path).generate(prompt, 8) == want).all()


@pytest.mark.parametrize("block", [32, 64])
def test_int4_runs_and_is_smaller(exported, tmp_path, block):
    m, path = exported
    dst = tmp_path / "q4.onnx"
    info = quantize_decoder(path, dst, "int4_weight_only", block_size=block, accuracy_level=4)
    ops = [n.op_type for n in onnx.load(str(dst)).graph.node]
    assert info["matmulnbits_nodes"] == ops.count("MatMulNBits") == 13  # q k v o fc proj x 2 + head
    assert dst.stat().st_size < path.stat().st_size / 2.5
    x = np.random.default_rng(1).integers(0, 256, (1, 16))
    ref = OrtDecoder(path).logits(x)
    got = OrtDecoder(dst).logits(x)
    assert got.shape == ref.shape and np.isfinite(got).all()
    assert 0 < np.abs(got - ref).max() < 0.5 * np.abs(ref).max() + 1  # quantized: close, not identical


def test_int8_dynamic(exported, tmp_path):
    m, path = exported
    dst = tmp_path / "q8.onnx"
    info = quantize_decoder(path, dst, "int8_dynamic")
    assert info["int8_matmuls"] >= 13 and dst.stat().st_size < path.stat().st_size / 2.5
    assert OrtDecoder(dst).generate(np.array([[1, 2, 3]]), 3).shape == (1, 3)


def test_bench_generation_rows(exported):
    m, path = exported
    rows = bench_generation({"a": path}, np.array([[1, 2, 3, 4]]), 4, threads=[1], rounds=3, calls=1, warmup=1)
    assert len(rows) == 1 and rows[0]["tokens_per_s"] > 0 and rows[0]["ttft_ms"]["calls"] == 3
