"""compress/bn.py: stale BatchNorm statistics are found without changing the model, and re-estimated."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compress import bn
from compress.models.zoo import cnn
from compress.stages.train import cross_entropy
from compress.training import accuracy, fit


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _slow_bn(model, momentum=0.01, eps=0.001):
    """torchvision's MobileNetV3/EfficientNet BatchNorm settings."""
    for m in bn.batchnorms(model):
        m.momentum, m.eps = momentum, eps
    return model


@pytest.fixture(scope="module")
def slow_trained(splits):
    """A digits CNN trained briefly with BatchNorm momentum 0.01, in a plain loop (no recalibration anywhere)."""
    torch.manual_seed(0)
    model = _slow_bn(cnn((1, 8, 8), 10, width=16, depth=2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(splits.train.x), torch.from_numpy(splits.train.y)
    model.train()
    for _ in range(3):
        for i in range(0, len(y), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    return model.eval()


def test_stale_statistics_score_at_chance_and_recalibration_restores_the_model(slow_trained, splits):
    stale = accuracy(slow_trained, splits.val.x, splits.val.y)
    before = _state(slow_trained)
    why = bn.staleness(slow_trained, splits.train.x)
    assert why == "BatchNorm momentum 0.01 is below PyTorch's default 0.1, so the running statistics lag the weights"
    assert _same(before, _state(slow_trained))  # the check changes nothing
    fixed, why2 = bn.fresh(slow_trained, splits.train.x)
    assert why2 == why and fixed is not slow_trained and _same(before, _state(slow_trained))
    good = accuracy(fixed, splits.val.x, splits.val.y)
    assert good > 0.8 and good - stale > 0.3, (stale, good)  # measured: 0.42 vs 0.92
    assert [m.momentum for m in bn.batchnorms(fixed)] == [0.01] * len(bn.batchnorms(fixed))  # momentum kept


def test_disagreement_finds_statistics_that_do_not_match_the_weights(trained_cnn, splits):
    assert bn.staleness(trained_cnn, splits.train.x) is None  # a healthy model: nothing to do
    broken = copy.deepcopy(trained_cnn)
    for m in bn.batchnorms(broken):
        m.running_mean.add_(3.0)  # statistics of some other data
    before = _state(broken)
    why = bn.staleness(broken, splits.train.x)
    assert why is not None and why.startswith("eval-mode predictions disagree with the batch-statistics ones on ")
    assert why.endswith("of 256 training samples (threshold 10%)") and _same(before, _state(broken))
    fixed, _ = bn.fresh(broken, splits.train.x)
    assert accuracy(fixed, splits.val.x, splits.val.y) >= accuracy(trained_cnn, splits.val.x, splits.val.y) - 0.03


def test_recalibration_is_deterministic_and_leaves_dropout_off(splits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Dropout(0.9), nn.BatchNorm1d(32), nn.Linear(32, 10))
    a, b = bn.recalibrate(model, splits.train.x, seed=1), bn.recalibrate(model, splits.train.x, seed=1)
    assert _same(_state(a), _state(b)) and not a.training
    # every training row (fewer than RECAL_SAMPLES), batches averaged equally: the statistics of the Linear's
    # outputs as they are at inference; with the dropout (p=0.9) active the variance would be about 10x larger
    with torch.no_grad():
        out = model[1](torch.from_numpy(splits.train.x).flatten(1))
    assert torch.allclose(a[3].running_mean, out.mean(0), atol=0.02)
    assert torch.allclose(a[3].running_var, out.var(0), rtol=0.15)


def test_fit_selects_on_fresh_statistics_and_says_so(splits):
    torch.manual_seed(0)
    model = _slow_bn(cnn((1, 8, 8), 10, width=8, depth=2))
    res = fit(model, splits, epochs=2, lr=3e-3, batch_size=64, seed=0, loss_fn=cross_entropy, desc="t", quiet=True)
    assert res.bn_recalibrated.startswith("BatchNorm momentum 0.01") and res.info["bn_recalibrated"] == res.bn_recalibrated
    assert res.best_val_accuracy > 0.5  # at chance (~0.1) without recalibration
    assert accuracy(res.model, splits.val.x, splits.val.y) == pytest.approx(res.best_val_accuracy)  # what was selected ships
