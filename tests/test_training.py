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
