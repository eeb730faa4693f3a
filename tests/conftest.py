"""Shared fixtures: the digits splits, a small trained CNN, a Context builder and a tiny recipe.

Trained models are session-scoped; tests must not mutate them (stages deep-copy, and the prune tests
check that they do).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from compress.artifact import Artifact
from compress.context import Context
from compress.data import load_data
from compress.models import zoo
from compress.recipe import DataConfig, parse_recipe
from compress.stages.prune import count_macs_params
from compress.stages.train import cross_entropy
from compress.training import fit

# Small models on 2 shared cores: intra-op threads only add contention (measured: 5 epochs of the
# width-8 CNN took 30 s with 2 threads next to another busy process and 2 s with one).
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parent.parent

MINIMAL_RECIPE = {
    "name": "unit",
    "teacher": {"model": {"arch": "cnn", "width": 8, "depth": 2}},
    "student": {"model": {"arch": "cnn", "width": 8, "depth": 2}},
    "stages": [{"type": "export"}],
}

# The tiny end-to-end recipe of the pipeline and CLI tests (a few seconds on 2 cores).
TINY_RECIPE = {
    "name": "tiny",
    "seed": 0,
    "teacher": {"model": {"arch": "cnn", "width": 8, "depth": 2}, "train": {"epochs": 3, "lr": 0.003}},
    "student": {"model": {"arch": "cnn", "width": 4, "depth": 2}},
    "stages": [
        {"type": "distill", "epochs": 2},
        {"type": "prune", "ratio": 0.3, "round_to": None},  # 4-8 channels: rounding to 8 would keep them all
        {"type": "finetune", "epochs": 1, "distill": True},
        {"type": "export", "format": ["onnx", "ort"]},
        {"type": "quantize", "mode": "int8_static"},
    ],
    # Few timing rounds: the tests check the report's structure, not speed.
    "bench": {"rounds": 3, "calls": 2, "batch": 8},
}


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def splits():
    return load_data(DataConfig(), seed=0)


@pytest.fixture(scope="session")
def text_splits():
    """stdlib-text, 32-byte snippets, ~40 per class: 8 classes, input (32,), a few hundred samples."""
    return load_data(DataConfig(source="stdlib-text", length=32, snippets_per_class=40), seed=0)


def train_model(model: torch.nn.Module, splits, epochs: int = 5, lr: float = 3e-3, seed: int = 0) -> torch.nn.Module:
    return fit(model, splits, epochs=epochs, lr=lr, batch_size=64, seed=seed, loss_fn=cross_entropy,
               desc="test", quiet=True).model.eval()


@pytest.fixture(scope="session")
def trained_cnn(splits):
    """cnn(width=8, depth=2): 8 and 16 channels, ~1.9k params, ~80 % test accuracy after 5 epochs."""
    torch.manual_seed(0)
    return train_model(zoo.cnn((1, 8, 8), 10, width=8, depth=2), splits)


@pytest.fixture(scope="session")
def trained_mlp(splits):
    """mlp(width=64, depth=2): Linear(64,64)+BN, Linear(64,64)+BN, Linear(64,10)."""
    torch.manual_seed(0)
    return train_model(zoo.mlp((1, 8, 8), 10, width=64, depth=2), splits)


def torch_artifact(model: torch.nn.Module, input_shape=(1, 8, 8)) -> Artifact:
    macs, params = count_macs_params(model, input_shape)
    return Artifact("student", "torch", model, params=params, macs=macs)


@pytest.fixture(scope="session")
def as_artifact():
    """as_artifact(model, input_shape=(1, 8, 8)) -> a torch Artifact with params and MACs counted."""
    return torch_artifact


@pytest.fixture(scope="session")
def train():
    """train(model, splits, epochs=5, lr=3e-3, seed=0) -> a trained copy (best val epoch, eval mode)."""
    return train_model


@pytest.fixture
def make_ctx(splits, trained_cnn, tmp_path):
    """make_ctx(teacher=None, out_dir=None, seed=0, recipe=None) -> Context for calling a stage function."""

    def make(teacher=None, out_dir=None, seed: int = 0, recipe: dict | None = None) -> Context:
        data = copy.deepcopy(recipe or MINIMAL_RECIPE)
        data["seed"] = seed
        return Context(recipe=parse_recipe(data), splits=splits, teacher=teacher if teacher is not None else trained_cnn,
                       out_dir=Path(out_dir or tmp_path), quiet=True)

    return make


@pytest.fixture
def tiny_recipe() -> dict:
    """The tiny end-to-end recipe as a fresh dict (free to modify)."""
    return copy.deepcopy(TINY_RECIPE)


@pytest.fixture(scope="session")
def tiny_recipe_template() -> dict:
    """The same recipe for module- and session-scoped fixtures: deep-copy before modifying."""
    return TINY_RECIPE


@pytest.fixture
def lm_docs(tmp_path):
    """``lm_docs(line, repeat)``: ten small text documents in ``tmp_path / "docs"`` (a ``source: text`` LM corpus);
    ``line`` is formatted with the document number ``i``."""

    def write(line: str = "def f{i}(x):\n    return x + {i}\n", repeat: int = 30) -> Path:
        docs = tmp_path / "docs"
        docs.mkdir(exist_ok=True)
        for i in range(10):
            (docs / f"{i:02d}.txt").write_text(line.format(i=i) * repeat)
        return docs

    return write

