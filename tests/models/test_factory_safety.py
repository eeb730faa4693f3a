"""A factory is the user's own code (compress/models/__init__.py ``build_model``): standard-library modules are refused
before import, standard-library callables re-exported by a user module after it, and anything but a Python function
or an nn.Module class before it is called."""

from __future__ import annotations

import uuid

import pytest
from torch import nn

from compress.errors import ModelError
from compress.models import build_model
from compress.models.spec import ModelSpec

NETS = '''
import functools
from os import system
from subprocess import Popen
from torch import nn


class Net(nn.Module):
    def __init__(self, hidden=8):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.body(x)


make = lambda hidden=8: Net(hidden)  # noqa: E731
partial_net = functools.partial(Net, hidden=4)


class Maker:
    def __call__(self):
        return Net()


maker = Maker()
'''


@pytest.fixture
def nets(tmp_path, monkeypatch):
    name = f"nets_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def error(factory: str, **kwargs) -> str:
    with pytest.raises(ModelError) as info:
        build_model(ModelSpec(factory=factory, kwargs=kwargs), (1, 8, 8), 10)
    return str(info.value)


def test_an_nn_module_class_and_a_lambda_are_factories(nets):
    assert isinstance(build_model(ModelSpec(factory=f"{nets}:Net", kwargs={"hidden": 5}), (1, 8, 8), 10), nn.Module)
    assert build_model(ModelSpec(factory=f"{nets}:make"), (1, 8, 8), 10).body[1].out_features == 8


@pytest.mark.parametrize("factory", ["os:system", "os.path:join", "subprocess:run", "builtins:eval", "posix:system",
                                     "importlib:import_module", "__main__:main", "shutil:rmtree", "pickle:loads"])
def test_standard_library_modules_are_refused_before_import(factory, monkeypatch):
    import importlib

    def no_import(name, *args):
        raise AssertionError(f"{name} was imported")

    monkeypatch.setattr(importlib, "import_module", no_import)
    module = factory.split(":")[0]
    assert error(factory, command="touch PWNED") == (
        f"factory '{factory}': '{module}' is part of the Python standard library; a factory must be your own code "
        "(a function or nn.Module class in your package)")


@pytest.mark.parametrize("name, origin", [("system", "posix"), ("Popen", "subprocess")])
def test_standard_library_callables_re_exported_by_a_user_module_are_refused(nets, name, origin):
    assert error(f"{nets}:{name}") == (
        f"factory '{nets}:{name}': '{name}' comes from '{origin}', which is part of the Python standard library; "
        "a factory must be your own code (a function or nn.Module class in your package)")


@pytest.mark.parametrize("name, what", [
    ("partial_net", "an object of type functools.partial, not a Python function"),
    ("maker", "an object of type {nets}.Maker, not a Python function"),
    ("Maker", "a class that does not subclass torch.nn.Module"),
])
def test_other_callables_are_refused_before_they_are_called(nets, name, what):
    assert error(f"{nets}:{name}") == (
        f"factory '{nets}:{name}': '{name}' is {what.format(nets=nets)}; a factory is your own function that returns "
        "a torch.nn.Module, or an nn.Module class")


def test_a_compiled_function_is_refused():
    assert error("torch:zeros", size=[3]).startswith("factory 'torch:zeros': 'zeros' is a built-in function (compiled code)")
