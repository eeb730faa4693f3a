"""compress/models/checkpoint.py: pruned shapes and tied weights survive a save and a load."""

import torch
from torch import nn

from compress.models.checkpoint import load_model_bytes, save_model


class Tied(nn.Module):
    """An embedding and a head sharing one weight, as a language model's often do."""

    def __init__(self, vocab=11, width=6):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.embed(ids))


def test_tied_weights_stay_one_parameter(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    with torch.no_grad():
        model.embed.weight.mul_(3)
    loaded = load_model_bytes(Tied(), save_model(model, tmp_path / "m.safetensors").read_bytes(), "m")
    assert loaded.head.weight is loaded.embed.weight
    assert torch.equal(loaded.embed.weight, model.embed.weight)
    assert len(list(loaded.parameters())) == 1  # an optimizer sees one tensor, as in the model that was saved


def test_a_pruned_linear_keeps_its_shape(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight = nn.Parameter(model[0].weight[:2].clone())
        model[0].bias = nn.Parameter(model[0].bias[:2].clone())
        model[0].out_features = 2
        model[2].weight = nn.Parameter(model[2].weight[:, :2].clone())
        model[2].in_features = 2
    data = save_model(model, tmp_path / "p.safetensors").read_bytes()
    loaded = load_model_bytes(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), data, "p")
    x = torch.randn(5, 4)
    assert loaded[0].out_features == 2 and torch.allclose(loaded(x), model(x))
