"""Hinton KD loss against values worked out by hand.

Two-class logits make the arithmetic closed-form: softmax([a, 0]) = [e^a / (1 + e^a), 1 / (1 + e^a)] = [s(a), s(-a)]
with s the logistic function, and log(p0 / p1) = a.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compress.losses import hinton_kd_loss, soft_kl

E = math.e

# Case A: student [1, 0], teacher [0, 1], label 0.
#   p_student = [e/(1+e), 1/(1+e)] = [0.7310586, 0.2689414]
#   p_teacher = [1/(1+e), e/(1+e)] = [0.2689414, 0.7310586]
#   CE = -log(e/(1+e)) = log(1+e) - 1 = 1.3132617 - 1 = 0.3132617
#   KL(teacher || student) = 0.2689414 * log(0.2689414/0.7310586) + 0.7310586 * log(0.7310586/0.2689414)
#                          = 0.2689414 * (-1) + 0.7310586 * (+1) = (e-1)/(e+1) = 0.4621172
S_A, T_A, Y_A = [[1.0, 0.0]], [[0.0, 1.0]], [0]
CE_A = math.log(1 + E) - 1
KL_A = (E - 1) / (E + 1)


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def kl_numpy(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
    """KL(softmax(teacher/T) || softmax(student/T)), summed over classes, averaged over rows (float64)."""

    def softmax(z):
        z = z / temperature
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    p, q = softmax(teacher.astype(np.float64)), softmax(student.astype(np.float64))
    return float((p * np.log(p / q)).sum(axis=1).mean())


def test_hand_values_at_temperature_1():
    assert CE_A == pytest.approx(0.3132617, abs=1e-7)
    assert KL_A == pytest.approx(0.4621172, abs=1e-7)
    assert F.cross_entropy(t(S_A), t(Y_A, torch.long)).item() == pytest.approx(CE_A, abs=1e-6)
    # T = 1: the T^2 factor is 1.
    assert soft_kl(t(S_A), t(T_A), 1.0).item() == pytest.approx(KL_A, abs=1e-6)
    # alpha = 0.5: 0.5 * 0.3132617 + 0.5 * 0.4621172 = 0.3876895 (the docstring's 0.3877)
    got = hinton_kd_loss(t(S_A), t(T_A), t(Y_A, torch.long), temperature=1.0, alpha=0.5).item()
    assert got == pytest.approx(0.5 * CE_A + 0.5 * KL_A, abs=1e-6)
    assert got == pytest.approx(0.3876895, abs=1e-6)


def test_temperature_2_by_hand_includes_t_squared():
    # T = 2: student [1, 0]/2 = [0.5, 0], teacher [0, 0.5].
    #   p_student = [s(0.5), s(-0.5)] = [0.6224593, 0.3775407], p_teacher = [0.3775407, 0.6224593]
    #   log(p_teacher/p_student) = [-0.5, +0.5]
    #   KL = 0.3775407 * (-0.5) + 0.6224593 * 0.5 = 0.5 * (0.6224593 - 0.3775407) = 0.5 * 0.2449187 = 0.1224593
    #   soft_kl = T^2 * KL = 4 * 0.1224593 = 0.4898373
    kl_at_2 = 0.5 * (1 / (1 + math.exp(-0.5)) - 1 / (1 + math.exp(0.5)))
    assert kl_at_2 == pytest.approx(0.1224593, abs=1e-7)
    got = soft_kl(t(S_A), t(T_A), 2.0).item()
    assert got == pytest.approx(4 * kl_at_2, abs=1e-6)
    assert got == pytest.approx(0.4898373, abs=1e-6)
    # and not the unscaled KL
    assert abs(got - kl_at_2) > 0.3
    # hinton with alpha = 0.25 at T = 2: 0.25 * CE (T-independent) + 0.75 * 0.4898373
    loss = hinton_kd_loss(t(S_A), t(T_A), t(Y_A, torch.long), temperature=2.0, alpha=0.25).item()
    assert loss == pytest.approx(0.25 * CE_A + 0.75 * 4 * kl_at_2, abs=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0, 7.5])
def test_soft_kl_is_t_squared_times_numpy_kl(temperature):
    rng = np.random.default_rng(42)
    s = rng.normal(0, 3, size=(5, 10)).astype(np.float32)
    te = rng.normal(0, 3, size=(5, 10)).astype(np.float32)
    expected = temperature * temperature * kl_numpy(s, te, temperature)
    got = soft_kl(torch.from_numpy(s), torch.from_numpy(te), temperature).item()
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_soft_kl_averages_over_the_batch_not_over_elements():
    # Row 1 is case A (KL 0.4621172), row 2 has identical logits (KL 0): batchmean = 0.4621172 / 2 = 0.2310586.
    # (A mean over all 4 elements would give 0.1155293.)
    s = t([[1.0, 0.0], [3.0, -2.0]])
    te = t([[0.0, 1.0], [3.0, -2.0]])
    assert soft_kl(s, te, 1.0).item() == pytest.approx(KL_A / 2, abs=1e-6)


def test_soft_kl_direction_is_teacher_to_student():
    # KL is asymmetric: KL(p_t || p_s) with p_t = [0.9, 0.1], p_s = [0.5, 0.5]
    #   = 0.9 * log(0.9/0.5) + 0.1 * log(0.1/0.5) = 0.9 * 0.5877867 + 0.1 * (-1.6094379) = 0.3680642
    # while KL(p_s || p_t) = 0.5 * log(0.5/0.9) + 0.5 * log(0.5/0.1) = 0.5 * (-0.5877867 + 1.6094379) = 0.5108256
    student = t([[0.0, 0.0]])
    teacher = t([[math.log(9.0), 0.0]])  # softmax = [9/10, 1/10]
    assert soft_kl(student, teacher, 1.0).item() == pytest.approx(0.3680642, abs=1e-6)


def test_alpha_1_is_exactly_cross_entropy():
    rng = np.random.default_rng(0)
    s, te = torch.from_numpy(rng.normal(size=(8, 10)).astype(np.float32)), torch.from_numpy(rng.normal(size=(8, 10)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 10, 8))
    assert torch.equal(hinton_kd_loss(s, te, y, temperature=4.0, alpha=1.0), F.cross_entropy(s, y))
    # case A by hand: alpha = 1 -> CE = 0.3132617, whatever the teacher says
    assert hinton_kd_loss(t(S_A), t(T_A), t(Y_A, torch.long), 4.0, 1.0).item() == pytest.approx(CE_A, abs=1e-6)


def test_alpha_0_is_only_the_soft_term():
    rng = np.random.default_rng(1)
    s, te = torch.from_numpy(rng.normal(size=(8, 10)).astype(np.float32)), torch.from_numpy(rng.normal(size=(8, 10)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 10, 8))
    assert hinton_kd_loss(s, te, y, temperature=3.0, alpha=0.0).item() == pytest.approx(soft_kl(s, te, 3.0).item(), abs=1e-7)
    # case A by hand at T = 1: only KL = 0.4621172, the label is ignored
    for label in (0, 1):
        got = hinton_kd_loss(t(S_A), t(T_A), t([label], torch.long), 1.0, 0.0).item()
        assert got == pytest.approx(KL_A, abs=1e-6)


def test_identical_logits_have_zero_soft_term():
    logits = t([[2.0, -1.0, 0.5], [0.0, 0.0, 4.0]])
    y = t([0, 2], torch.long)
    for temperature in (1.0, 4.0, 20.0):
        assert abs(soft_kl(logits, logits.clone(), temperature).item()) < 1e-6
        loss = hinton_kd_loss(logits, logits.clone(), y, temperature, alpha=0.3).item()
        assert loss == pytest.approx(0.3 * F.cross_entropy(logits, y).item(), abs=1e-6)


def test_t_squared_keeps_gradients_on_the_logit_scale_at_high_temperature():
    # Hinton et al. sec. 2.1: d KL_T / d z_i ~ (z_i - v_i) / (N T^2) for zero-mean logits and large T;
    # with the T^2 factor the gradient tends to (z_i - v_i) / N, independent of T.
    # z = [1, 0, -1], v = [0.5, 0.2, -0.7], N = 3: (z - v) / 3 = [0.1666667, -0.0666667, -0.1]
    z = t([[1.0, 0.0, -1.0]]).requires_grad_(True)
    v = t([[0.5, 0.2, -0.7]])
    soft_kl(z, v, 200.0).backward()
    np.testing.assert_allclose(z.grad.numpy()[0], [0.5 / 3, -0.2 / 3, -0.1], atol=2e-3)


def test_gradient_of_the_combined_loss_by_hand():
    # d CE / d s = softmax(s) - onehot(y); d (T^2 KL_T) / d s = T * (softmax(s/T) - softmax(t/T)).
    # Case A, T = 1, alpha = 0.5, y = 0:
    #   softmax(s) - onehot = [0.7310586 - 1, 0.2689414] = [-0.2689414, 0.2689414]
    #   softmax(s) - softmax(t) = [0.7310586 - 0.2689414, 0.2689414 - 0.7310586] = [0.4621172, -0.4621172]
    #   grad = 0.5 * [-0.2689414, 0.2689414] + 0.5 * [0.4621172, -0.4621172] = [0.0965879, -0.0965879]
    s = t(S_A).requires_grad_(True)
    hinton_kd_loss(s, t(T_A), t(Y_A, torch.long), 1.0, 0.5).backward()
    np.testing.assert_allclose(s.grad.numpy()[0], [0.0965879, -0.0965879], atol=1e-6)
