"""The built-in transformers, vision and text (the cnn and mlp are covered in test_models.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from compress.models import build_model, describe_spec
from compress.models.zoo import Attention, ByteTokens, text_transformer, transformer
from compress.recipe import ModelSpec


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_transformer_parameter_count_by_hand():
    # width 32, depth 2, 4 heads, MLP hidden 64, on 1x8x8 in 2x2 patches: 16 tokens of 4 values.
    #   token embedding Linear(4, 32): 160; position embedding 16 x 32: 512
    #   per block: LayerNorm 64, qkv Linear(32, 96): 3168, proj Linear(32, 32): 1056, LayerNorm 64,
    #              fc1 Linear(32, 64): 2112, fc2 Linear(64, 32): 2080 -> 8544; two blocks 17088
    #   final LayerNorm 64, classifier Linear(32, 10): 330.  Total 160 + 512 + 17088 + 64 + 330 = 18154
    assert n_params(transformer((1, 8, 8), 10, width=32, depth=2, heads=4)) == 18154


@pytest.mark.parametrize("shape, tokens", [((1, 8, 8), 16), ((3, 6, 4), 6), ((1, 5, 5), 25), ((64,), 64), ((7,), 7)])
def test_transformer_tokens_and_output(shape, tokens):
    torch.manual_seed(0)
    model = transformer(shape, 3, width=8, depth=1, heads=2).eval()
    assert model.features[0].pos.shape == (1, tokens, 8)
    out = model(torch.randn(5, *shape))
    assert out.shape == (5, 3) and torch.isfinite(out).all()
    attn = [m for m in model.modules() if isinstance(m, Attention)]
    assert [a.num_heads for a in attn] == [2] and attn[0].head_dim == 4


def test_transformer_is_batch_independent():
    """Each sample's logits do not depend on the other samples (attention runs over tokens, not the batch)."""
    torch.manual_seed(0)
    model = transformer((1, 8, 8), 10, width=16, depth=2, heads=4).eval()
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_transformer_width_must_split_into_heads():
    with pytest.raises(ValueError, match="width 30 must be a multiple of heads 4"):
        transformer((1, 8, 8), 10, width=30, heads=4)
    with pytest.raises(ValidationError, match="width 30 must be a multiple of heads 4"):
        ModelSpec(arch="transformer", width=30)
    with pytest.raises(ValidationError, match="'heads' is a key of arch 'transformer' and 'text_transformer' only"):
        ModelSpec(arch="cnn", heads=2)


def test_build_transformer_from_spec():
    spec = ModelSpec(arch="transformer", width=24, depth=3, heads=6)
    model = build_model(spec, (1, 8, 8), 10)
    assert [m.num_heads for m in model.modules() if isinstance(m, Attention)] == [6, 6, 6]
    assert describe_spec(spec) == "transformer(width=24, depth=3, heads=6)"
    assert describe_spec(ModelSpec(arch="transformer", width=8)) == "transformer(width=8, depth=2, heads=4)"
    assert describe_spec(ModelSpec(arch="cnn", width=8)) == "cnn(width=8, depth=2)"


# --- text_transformer -----------------------------------------------------------------------------


def random_bytes(n: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, length)).astype(np.float32))


def test_text_transformer_parameter_count_by_hand():
    # width 8, depth 1, 2 heads, MLP hidden 16, 16 bytes, 3 classes:
    #   byte embedding 256 x 8: 2048; position embedding 16 x 8: 128
    #   block: LayerNorm 16, qkv Linear(8, 24): 216, proj Linear(8, 8): 72, LayerNorm 16,
    #          fc1 Linear(8, 16): 144, fc2 Linear(16, 8): 136 -> 600
    #   final LayerNorm 16, classifier Linear(8, 3): 27.  Total 2048 + 128 + 600 + 16 + 27 = 2819
    assert n_params(text_transformer((16,), 3, width=8, depth=1, heads=2)) == 2819
    # patch 4: bytes embedded in ceil(8 / 4) = 2 dims (512), 4 of them concatenated and projected by
    # Linear(8, 8) (72), 16 / 4 = 4 positions (32); the rest as above: 512 + 72 + 32 + 600 + 16 + 27 = 1259
    assert n_params(text_transformer((16,), 3, width=8, depth=1, heads=2, patch=4)) == 1259


@pytest.mark.parametrize("patch, tokens", [(1, 32), (4, 8), (32, 1)])
def test_text_transformer_forward_shapes_and_layers(patch, tokens):
    torch.manual_seed(0)
    model = text_transformer((32,), 5, width=16, depth=2, heads=4, patch=patch).eval()
    assert isinstance(model.features[0], ByteTokens) and model.features[0].pos.shape == (1, tokens, 16)
    assert [a.num_heads for a in model.modules() if isinstance(a, Attention)] == [4, 4]
    out = model(random_bytes(7, 32))
    assert out.shape == (7, 5) and torch.isfinite(out).all()
    with torch.no_grad():  # each sample on its own: attention runs over bytes, not over the batch
        x = random_bytes(4, 32, seed=1)
        torch.testing.assert_close(model(x), torch.cat([model(x[i:i + 1]) for i in range(4)]), atol=1e-5, rtol=1e-5)


def test_text_transformer_reads_bytes_by_rounding():
    """A byte that went through an INT8 quantize-dequantize pair comes back within half a step of its
    value: rounding gives the same token, truncation (a plain cast) would give the byte below."""
    torch.manual_seed(0)
    model = text_transformer((16,), 3, width=8, depth=1, heads=2).eval()
    x = random_bytes(4, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x - 0.3), model(x))
        torch.testing.assert_close(model(x + 0.3), model(x))
        assert not torch.allclose(model(x + 1), model(x))
        torch.testing.assert_close(model(torch.full((1, 16), 300.0)), model(torch.full((1, 16), 255.0)))  # clamped


def test_text_transformer_needs_sequences():
    with pytest.raises(ValueError, match=r"arch 'text_transformer' needs byte sequences N x L \(got input shape \(1, 8, 8\)\)"):
        text_transformer((1, 8, 8), 10)
    with pytest.raises(ValueError, match="arch 'text_transformer': width 30 must be a multiple of heads 4"):
        text_transformer((16,), 10, width=30)
    with pytest.raises(ValueError, match="arch 'text_transformer': patch 3 does not divide the snippet length 16"):
        text_transformer((16,), 10, patch=3)
    with pytest.raises(ValidationError, match="'patch' is a key of arch 'transformer' and 'text_transformer' only"):
        ModelSpec(arch="mlp", patch=2)
    spec = ModelSpec(arch="text_transformer", width=24, depth=3, heads=6)
    assert describe_spec(spec) == "text_transformer(width=24, depth=3, heads=6)"
    assert describe_spec(ModelSpec(arch="text_transformer", patch=4)) == "text_transformer(width=16, depth=2, heads=4, patch=4)"
    assert build_model(ModelSpec(arch="text_transformer", patch=4), (16,), 4).features[0].pos.shape == (1, 4, 16)
    assert [m.num_heads for m in build_model(spec, (16,), 4).modules() if isinstance(m, Attention)] == [6, 6, 6]


@pytest.mark.parametrize("patch", [1, 4])
def test_text_transformer_exports_to_onnx(tmp_path, patch):
    """onnxruntime on the exported file gives torch's logits, at batch sizes other than the export's."""
    import onnxruntime as ort

    from compress._onnx import export_onnx

    torch.manual_seed(0)
    model = text_transformer((32,), 8, width=16, depth=2, heads=4, patch=patch).eval()
    path = export_onnx(model, (32,), tmp_path / "text.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        x = random_bytes(n, 32, seed=n)
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == (n, 8)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
