"""RKD distance and angle losses against values worked out by hand (three points)."""

from __future__ import annotations

import pytest
import torch

from compress.losses.rkd import pairwise_distance, rkd_angle, rkd_distance

# Student: a 3-4-5 right triangle; teacher: three points on a line, 1 apart.
STUDENT = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
TEACHER = torch.tensor([[0.0], [1.0], [2.0]])


def test_distance_by_hand():
    # student distances d01 = 3, d02 = 4, d12 = 5; mean over the 6 off-diagonal entries = 24 / 6 = 4
    #   -> normalised 0.75, 1.0, 1.25
    # teacher d01 = 1, d02 = 2, d12 = 1; mean = 8 / 6 = 4/3 -> 0.75, 1.5, 0.75
    # differences: 0, -0.5, +0.5; Huber (|x| < 1): 0.5 x^2 = 0.125, each pair twice in the 3 x 3 matrix
    # mean over all 9 entries (diagonal 0): 4 * 0.125 / 9 = 0.0555556
    assert pairwise_distance(STUDENT).tolist() == [[0.0, 3.0, 4.0], [3.0, 0.0, 5.0], [4.0, 5.0, 0.0]]
    assert rkd_distance(STUDENT, TEACHER).item() == pytest.approx(0.5 / 9, abs=1e-6)


def test_angle_by_hand():
    # cos of the angle at j between e_i - e_j and e_k - e_j, for all 27 (j, i, k); 0 when i = j or k = j.
    # student: at 0: 0 (right angle); at 1: (-1, 0).(-0.6, 0.8) = 0.6; at 2: (0, -1).(0.6, -0.8) = 0.8
    # teacher (on a line): at 0: +1; at 1: -1; at 2: +1; i = k entries are 1 for both.
    # differences (each twice, i < k and k < i): -1, 1.6, -0.2; Huber: 0.5 (|x| = 1), 1.6 - 0.5 = 1.1, 0.5 * 0.04 = 0.02
    # mean over 27 entries: 2 * (0.5 + 1.1 + 0.02) / 27 = 3.24 / 27 = 0.12
    assert rkd_angle(STUDENT, TEACHER).item() == pytest.approx(0.12, abs=1e-6)


def test_relations_ignore_scale_and_gradients_reach_only_the_student():
    assert rkd_distance(STUDENT * 10, STUDENT).item() == pytest.approx(0.0, abs=1e-7)
    assert rkd_angle(STUDENT * 10, STUDENT).item() == pytest.approx(0.0, abs=1e-7)
    s = STUDENT.clone().requires_grad_(True)
    t = TEACHER.clone().requires_grad_(True)
    (rkd_distance(s, t) + rkd_angle(s, t)).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None
