"""compress/lm/model.py: the KV cache gives the same logits as a full pass; generate fits the context."""

import pytest
import torch

from compress.lm.model import GPT, GPTConfig, generate


def test_kv_cache_matches_full_pass():
    torch.manual_seed(0)
    m = GPT(GPTConfig(width=32, layers=2, heads=4, context=16)).eval()
    x = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        full, _ = m(x)
        logits, past = m(x[:, :7])
        steps = [logits]
        for j in range(7, 12):
            logits, past = m(x[:, j:j + 1], past)
            steps.append(logits)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    assert past[0][0].shape == (2, 4, 12, 8)


def test_causal():
    torch.manual_seed(0)
    m = GPT(GPTConfig(width=32, layers=1, heads=2, context=16)).eval()
    x = torch.randint(0, 256, (1, 10))
    y = x.clone()
    y[0, 6:] = 0
    with torch.no_grad():
        assert torch.allclose(m(x)[0][:, :6], m(y)[0][:, :6], atol=1e-6)


def test_generate_greedy_and_context_limit():
    torch.manual_seed(0)
    m = GPT(GPTConfig(width=32, layers=1, heads=2, context=16))
    out = generate(m, torch.zeros(1, 4, dtype=torch.long), 5)
    assert out.shape == (1, 5)
    with pytest.raises(ValueError, match="exceed the context"):
        generate(m, torch.zeros(1, 10, dtype=torch.long), 7)
