"""``kl``, ``mse`` and ``ce`` terms against values worked out by hand (two-class case A of test_hinton.py)."""

from __future__ import annotations

import math

import pytest
import torch

from compress.losses.base import LOSSES, Batch, Probe
from compress.models.zoo import cnn

E = math.e


def term(entry: dict, stage: dict | None = None):
    cfg = LOSSES[entry["kind"]].config.model_validate(entry)
    return LOSSES[cfg.kind].build(cfg, Probe(None, cnn((1, 8, 8), 10), (1, 8, 8), stage or {}))


def batch(s, t, y):
    return Batch(torch.tensor(s), torch.tensor(y), torch.tensor(t))


CASE_A = ([[1.0, 0.0]], [[0.0, 1.0]], [0])  # student, teacher, label


def test_kl_is_the_soft_term_alone():
    # T = 1: KL(teacher || student) = 0.2689414 * (-1) + 0.7310586 * (+1) = (e - 1)/(e + 1) = 0.4621172; no CE part.
    got = term({"kind": "kl", "temperature": 1.0})(batch(*CASE_A)).item()
    assert got == pytest.approx((E - 1) / (E + 1), abs=1e-6)
    assert got == pytest.approx(0.4621172, abs=1e-6)


def test_kl_takes_the_stage_temperature_by_default():
    # T = 2 (from the stage): T^2 * 0.5 * (s(0.5) - s(-0.5)) = 4 * 0.1224593 = 0.4898373 (see test_hinton.py)
    got = term({"kind": "kl"}, {"temperature": 2.0})(batch(*CASE_A)).item()
    assert got == pytest.approx(0.4898373, abs=1e-6)


def test_mse_by_hand():
    # case A: ((1 - 0)^2 + (0 - 1)^2) / 2 = 1.0
    assert term({"kind": "mse"})(batch(*CASE_A)).item() == pytest.approx(1.0)
    # [[1, 2], [3, 4]] vs zeros: (1 + 4 + 9 + 16) / 4 = 7.5 (mean over batch and classes)
    assert term({"kind": "mse"})(batch([[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]], [0, 0])).item() == pytest.approx(7.5)


def test_ce_ignores_the_teacher():
    # -log(e / (1 + e)) = log(1 + e) - 1 = 0.3132617, whatever the teacher says (None here)
    s, _, y = CASE_A
    t = term({"kind": "ce"})
    assert not t.needs_teacher
    assert t(Batch(torch.tensor(s), torch.tensor(y), None)).item() == pytest.approx(0.3132617, abs=1e-6)


def test_hinton_term_takes_stage_values_unless_given():
    # stage T = 1, alpha = 0.5: 0.5 * 0.3132617 + 0.5 * 0.4621172 = 0.3876895
    assert term({"kind": "hinton"}, {"temperature": 1.0, "alpha": 0.5})(batch(*CASE_A)).item() == pytest.approx(0.3876895, abs=1e-6)
    # alpha = 1 given in the entry wins over the stage's 0.5: CE only = 0.3132617
    got = term({"kind": "hinton", "alpha": 1.0}, {"temperature": 1.0, "alpha": 0.5})(batch(*CASE_A)).item()
    assert got == pytest.approx(0.3132617, abs=1e-6)
