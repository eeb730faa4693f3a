"""compress/stages/lm_prune.py: the lowest-norm heads and hidden units go; the rest compute exactly as before."""

import torch

from compress.lm.model import GPT, GPTConfig
from compress.stages.lm_prune import head_scores, prune_gpt


def test_prune_removes_weak_heads_and_units_exactly():
    torch.manual_seed(0)
    m = GPT(GPTConfig(width=32, layers=1, heads=4, context=16)).eval()
    a, mlp = m.blocks[0].attn, m.blocks[0].mlp
    with torch.no_grad():
        for lin in (a.q, a.k, a.v):  # head 2 is silent: zero rows
            lin.weight[16:24] = 0
            lin.bias[16:24] = 0
        a.o.weight[:, 16:24] = 0
        mlp.fc.weight[:64] *= 0.01  # the first half of the hidden units is weak
        mlp.proj.weight[:, :64] *= 0.01
    assert head_scores(m, 0).argmin() == 2
    p, rows = prune_gpt(m, heads=0.25, mlp=0.5)
    assert p.cfg.layer_heads == (3,) and p.cfg.layer_hidden == (64,)
    assert rows == [[0, "3/4", "64/128"]]
    # removing a silent head changes nothing; the kept MLP units are exactly the strong ones
    with torch.no_grad():
        mlp.fc.weight[:64] = 0
        mlp.fc.bias[:64] = 0
    x = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        assert torch.allclose(m(x)[0], p(x)[0], atol=1e-5)
    # a pruned model keeps its KV cache working
    with torch.no_grad():
        lg, past = p(x[:, :5])
        lg2, _ = p(x[:, 5:], past)
        assert torch.allclose(torch.cat([lg, lg2], 1), p(x)[0], atol=1e-5)
