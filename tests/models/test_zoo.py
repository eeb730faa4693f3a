"""The built-in transformer (the cnn and mlp are covered in test_models.py)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from compress.models import build_model, describe_spec
from compress.models.zoo import Attention, transformer
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
    with pytest.raises(ValidationError, match="'heads' is a key of arch 'transformer' only"):
        ModelSpec(arch="cnn", heads=2)


def test_build_transformer_from_spec():
    spec = ModelSpec(arch="transformer", width=24, depth=3, heads=6)
    model = build_model(spec, (1, 8, 8), 10)
    assert [m.num_heads for m in model.modules() if isinstance(m, Attention)] == [6, 6, 6]
    assert describe_spec(spec) == "transformer(width=24, depth=3, heads=6)"
    assert describe_spec(ModelSpec(arch="transformer", width=8)) == "transformer(width=8, depth=2, heads=4)"
    assert describe_spec(ModelSpec(arch="cnn", width=8)) == "cnn(width=8, depth=2)"
