"""compress/cache.py: trained weights round-trip through the cache, tied weights included."""

import torch
from torch import nn

from compress.cache import load_cached, save_cached


class Tied(nn.Module):
    """An embedding and an output head sharing one weight, as Hugging Face causal LMs do."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight


def test_tied_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    a = Tied()
    save_cached(tmp_path, "k", a)
    torch.manual_seed(1)
    fresh = Tied()
    b = load_cached(tmp_path, "k", fresh)
    assert b is not fresh and torch.equal(b.emb.weight, a.emb.weight)
    assert b.head.weight.data_ptr() == b.emb.weight.data_ptr()  # still one tensor
    assert not torch.equal(fresh.emb.weight, a.emb.weight)  # the template is left alone


def test_a_damaged_entry_is_a_miss(tmp_path):
    save_cached(tmp_path, "k", Tied())
    (tmp_path / "k.safetensors").write_bytes(b"garbage")
    assert load_cached(tmp_path, "k", Tied()) is None
    assert load_cached(tmp_path, "missing", Tied()) is None
