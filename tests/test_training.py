"""The shared training loop: best-on-validation selection and the non-finite-loss guard."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from compress.errors import StageError
from compress.models.zoo import mlp
from compress.training import fit


def test_nan_loss_stops_with_stage_epoch_and_hint(splits):
    calls = {"n": 0}

    def loss_fn(logits, targets, idx):
        calls["n"] += 1
        loss = F.cross_entropy(logits, targets)
        return loss * float("nan") if calls["n"] > 20 else loss  # diverges in epoch 2 (17 batches per epoch)

    torch.manual_seed(0)
    with pytest.raises(StageError) as info:
        fit(mlp((1, 8, 8), 10, width=8, depth=1), splits, epochs=5, lr=1e-3, batch_size=64, seed=0,
            loss_fn=loss_fn, desc="distill", quiet=True)
    msg = str(info.value)
    assert msg.startswith("distill: loss became nan at epoch 2, batch 4;")
    assert "best weights so far (epoch 1)" in msg and "Hint: lower the learning rate (now 0.001)" in msg


def test_best_validation_epoch_is_kept(splits):
    torch.manual_seed(0)
    res = fit(mlp((1, 8, 8), 10, width=16, depth=1), splits, epochs=4, lr=3e-3, batch_size=64, seed=0,
              loss_fn=lambda logits, y, idx: F.cross_entropy(logits, y), desc="train", quiet=True)
    best = max(res.history, key=lambda h: (h["val_accuracy"], -h["val_loss"]))
    assert res.best_epoch == best["epoch"] and res.best_val_accuracy == best["val_accuracy"]
    from compress.training import accuracy

    assert accuracy(res.model, splits.val.x, splits.val.y) == pytest.approx(res.best_val_accuracy)


def test_divergence_stops_and_the_pipeline_keeps_the_last_good_weights(tmp_path, monkeypatch):
    from compress.errors import StageError
    from compress.pipeline import run
    from compress.recipe import parse_recipe

    # no BatchNorm to rein it in: a linear model at lr 10 blows up in its first epoch
    (tmp_path / "plainnet.py").write_text("from torch import nn\n"
                                          "def make():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("compress.training.DIVERGENCE", 5.0)  # lr 10 makes the loss ~25x the first batch's
    recipe = parse_recipe({"name": "boom", "teacher": {"model": {"arch": "mlp", "width": 16, "depth": 1},
                                                       "train": {"epochs": 1}},
                           "student": {"model": {"factory": "plainnet:make"}},
                           "stages": [{"type": "distill", "epochs": 1}, {"type": "train", "epochs": 3, "lr": 10.0}],
                           "baseline": "none"})
    with pytest.raises(StageError) as info:
        run(recipe, output=tmp_path, quiet=True)
    msg = str(info.value)
    assert msg.startswith("stage 2 (train): train: training diverged at epoch 1 (mean loss ")
    assert "best weights so far (the initial weights). Hint: lower the learning rate (now 10.0)." in msg
    saved = tmp_path / "boom" / "last_good" / "02_train.safetensors"
    assert saved.exists() and str(saved) in msg


def test_an_exploding_loss_is_divergence(splits):
    torch.manual_seed(1)
    with pytest.raises(StageError, match=r"^t: training diverged at epoch 1 \(mean loss [0-9.e+]+, more than 100x "
                                         r"the first batch's 2\.\d+\); .* Hint: lower the learning rate \(now 1000.0\)"):
        fit(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), splits, epochs=3, lr=1000.0,
            batch_size=64, seed=0, loss_fn=lambda lg, y, i: F.cross_entropy(lg, y), desc="t", quiet=True)
