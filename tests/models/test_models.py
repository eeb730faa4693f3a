"""Model zoo, user factories, safe weight loading and the I/O check."""

from __future__ import annotations

import ast
import os
import pickle
import uuid

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from compress.errors import ModelError
from compress.models import build_model, check_io, describe_spec, load_weights, read_state_dict
from compress.models.zoo import cnn, mlp
from compress.recipe import ModelSpec


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# --- zoo ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, classes, width, depth", [((1, 8, 8), 10, 8, 2), ((3, 16, 12), 4, 4, 3), ((2, 1, 1), 3, 5, 1)])
def test_cnn_output_shape(shape, classes, width, depth):
    model = cnn(shape, classes, width=width, depth=depth).eval()
    assert model(torch.zeros(5, *shape)).shape == (5, classes)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [width * 2 ** i for i in range(depth)]


def test_cnn_parameter_count_by_hand():
    # width 8, depth 2 on 1x8x8, 10 classes:
    #   conv 1->8 3x3 no bias: 72; BN(8): 16; conv 8->16: 1152; BN(16): 32;
    #   2x2 grid * 16 channels = 64 features -> Linear(64, 10): 650.  Total 72 + 16 + 1152 + 32 + 650 = 1922
    assert n_params(cnn((1, 8, 8), 10, width=8, depth=2)) == 1922


@pytest.mark.parametrize("shape", [(64,), (1, 8, 8), (3, 4, 4)])
def test_mlp_output_shape(shape):
    model = mlp(shape, 7, width=16, depth=3).eval()
    assert model(torch.zeros(4, *shape)).shape == (4, 7)
    # 3 hidden Linear(no bias)+BN, then Linear(16, 7); the first layer sees all input features
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(int(torch.tensor(shape).prod()), 16), (16, 16), (16, 16), (16, 7)]


def test_build_model_zoo_and_flat_input_error():
    model = build_model(ModelSpec(arch="mlp", width=12, depth=1), (64,), 10)
    assert model.eval()(torch.zeros(3, 64)).shape == (3, 10)
    with pytest.raises(ModelError, match=r"arch 'cnn' needs image input C x H x W \(got input shape \(64,\)\); use arch 'mlp'"):
        build_model(ModelSpec(arch="cnn"), (64,), 10)


def test_describe_spec():
    assert describe_spec(ModelSpec(arch="cnn", width=4, depth=3)) == "cnn(width=4, depth=3)"
    assert describe_spec(ModelSpec(factory="pkg.mod:make", kwargs={"hidden": 5})) == "pkg.mod:make(hidden=5)"


# --- user factories -------------------------------------------------------------------------------

FACTORY = '''
from torch import nn

def make(hidden=8, classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, classes))

def not_a_model():
    return 42

CONSTANT = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A fresh importable module (unique name, so no import cache is shared between tests)."""
    name = f"usermod_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_user_factory_with_kwargs(user_module):
    model = build_model(ModelSpec(factory=f"{user_module}:make", kwargs={"hidden": 12}), (1, 8, 8), 10)
    assert isinstance(model, nn.Sequential)
    assert model[1].out_features == 12
    assert model.eval()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    check_io(model, (1, 8, 8), 10, "student")


def test_user_factory_errors(user_module):
    with pytest.raises(ModelError, match=r"cannot import module 'no_such_module_xyz'"):
        build_model(ModelSpec(factory="no_such_module_xyz:make"), (1, 8, 8), 10)
    with pytest.raises(ModelError, match=f"module '{user_module}' has no function 'missing'"):
        build_model(ModelSpec(factory=f"{user_module}:missing"), (1, 8, 8), 10)
    with pytest.raises(ModelError, match=f"module '{user_module}' has no function 'CONSTANT'"):
        build_model(ModelSpec(factory=f"{user_module}:CONSTANT"), (1, 8, 8), 10)
    with pytest.raises(ModelError, match=r"rejected kwargs \{'depth': 3\}"):
        build_model(ModelSpec(factory=f"{user_module}:make", kwargs={"depth": 3}), (1, 8, 8), 10)
    with pytest.raises(ModelError, match="returned int, not a torch.nn.Module"):
        build_model(ModelSpec(factory=f"{user_module}:not_a_model"), (1, 8, 8), 10)


def test_check_io_wrong_class_count_and_wrong_input(user_module):
    model = build_model(ModelSpec(factory=f"{user_module}:make", kwargs={"classes": 5}), (1, 8, 8), 10)
    with pytest.raises(ModelError, match=r"outputs \(2, 5\) for a batch of 2, but the data has 10 classes") as err:
        check_io(model, (1, 8, 8), 10, "teacher mymodel")
    assert str(err.value).startswith("teacher mymodel")
    with pytest.raises(ModelError, match=r"cannot take the data's input shape \(3, 8, 8\)"):
        check_io(model, (3, 8, 8), 5, "teacher")


# --- weights --------------------------------------------------------------------------------------


@pytest.fixture
def source():
    torch.manual_seed(1)
    model = cnn((1, 8, 8), 10, width=4, depth=2)
    with torch.no_grad():  # non-default BN statistics, so that buffers are checked too
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model.eval()


def assert_same_weights(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_load_weights_roundtrip(tmp_path, source, suffix):
    path = tmp_path / f"w{suffix}"
    sd = source.state_dict()
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    assert set(read_state_dict(path)) == set(sd)
    torch.manual_seed(2)
    target = cnn((1, 8, 8), 10, width=4, depth=2)
    assert load_weights(target, path) is target
    assert_same_weights(target, source)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(target.eval()(x), source(x))


def test_pt_checkpoint_with_nested_state_dict(tmp_path, source):
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": source.state_dict()}, path)
    assert_same_weights(load_weights(cnn((1, 8, 8), 10, width=4, depth=2), path), source)


def test_missing_weights_file(tmp_path):
    with pytest.raises(ModelError, match="weights file not found"):
        read_state_dict(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncated_file(tmp_path, source, suffix):
    full = tmp_path / f"full{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(full))
    else:
        torch.save(source.state_dict(), full)
    cut = tmp_path / f"cut{suffix}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="corrupt or truncated") as err:
        read_state_dict(cut)
    assert str(cut) in str(err.value)


class _Exploit:
    def __init__(self, flag):
        self.flag = str(flag)

    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


@pytest.mark.parametrize("how", ["torch.save", "pickle", "inside-state-dict"])
def test_pickle_with_code_is_refused_and_not_run(tmp_path, how):
    flag = tmp_path / f"pwned_{uuid.uuid4().hex}"
    path = tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save(_Exploit(flag), path)
    elif how == "pickle":
        with open(path, "wb") as f:
            pickle.dump({"weight": _Exploit(flag)}, f)
    else:
        torch.save({"features.0.weight": torch.zeros(4, 1, 3, 3), "payload": _Exploit(flag)}, path)
    assert not flag.exists()
    with pytest.raises(ModelError, match="refused") as err:
        read_state_dict(path)
    assert str(path) in str(err.value)
    model = cnn((1, 8, 8), 10, width=4, depth=2)
    with pytest.raises(ModelError, match="refused"):
        load_weights(model, path)
    assert not flag.exists()


def test_pt_holding_something_else_than_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ModelError, match="expected a state dict .*got list"):
        read_state_dict(path)


def test_wrong_keys_are_named_and_nothing_is_loaded(tmp_path, source):
    sd = {k: v.contiguous() for k, v in source.state_dict().items()}
    sd["head.weight"] = sd.pop("classifier.weight")  # renamed
    sd["extra.bias"] = torch.zeros(3)  # not in the model
    path = tmp_path / "renamed.safetensors"
    save_file(sd, str(path))
    target = cnn((1, 8, 8), 10, width=4, depth=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ModelError, match="state dict does not match the model") as err:
        load_weights(target, path)
    msg = str(err.value)
    assert "missing keys ['classifier.weight']" in msg
    unexpected = msg.split("unexpected keys ")[1]
    assert sorted(ast.literal_eval(unexpected)) == ["extra.bias", "head.weight"]  # safetensors may reorder keys
    assert str(path) in msg
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} was changed although loading failed"


def test_many_wrong_keys_are_abbreviated(tmp_path, source):
    path = tmp_path / "other.pt"
    torch.save({f"layer{i}.weight": torch.zeros(1) for i in range(8)}, path)
    with pytest.raises(ModelError) as err:
        load_weights(cnn((1, 8, 8), 10, width=4, depth=2), path)
    msg = str(err.value)
    assert "unexpected keys ['layer0.weight', 'layer1.weight', 'layer2.weight', 'layer3.weight', 'layer4.weight'] ..." in msg
    assert "layer5.weight" not in msg


def test_wrong_shapes_name_the_tensor(tmp_path, source):
    path = tmp_path / "w4.pt"
    torch.save(source.state_dict(), path)
    target = cnn((1, 8, 8), 10, width=8, depth=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ModelError, match="tensor shapes do not match") as err:
        load_weights(target, path)
    assert "features.0.weight: file (4, 1, 3, 3) vs model (8, 1, 3, 3)" in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())
