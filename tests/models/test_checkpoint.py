"""compress/models/checkpoint.py: pruned shapes and tied weights survive a save and a load."""

import pytest
import torch
from torch import nn

from compress.errors import ModelError
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


def test_a_tied_tensor_stored_under_one_name_is_shared_again(tmp_path):
    """A file may hold a tied pair under one of its names (safetensors' own save_model keeps one; here the second)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = Tied()
    save_file({"head.weight": model.head.weight.detach().clone()}, str(tmp_path / "d.safetensors"))
    loaded = load_model_bytes(Tied(), (tmp_path / "d.safetensors").read_bytes(), "d")
    assert loaded.head.weight is loaded.embed.weight and torch.equal(loaded.embed.weight, model.embed.weight)


def test_a_checkpoint_that_lacks_a_tensor_is_refused(tmp_path):
    from safetensors.torch import save_file

    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    tensors = {k: v for k, v in model.state_dict().items() if k != "1.running_var"}
    save_file(tensors, str(tmp_path / "x.safetensors"))
    with pytest.raises(ModelError, match=r"^x: the checkpoint lacks \['1.running_var'\]$"):
        load_model_bytes(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), (tmp_path / "x.safetensors").read_bytes(), "x")
