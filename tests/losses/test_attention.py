"""Attention transfer against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from compress.losses.attention import at_loss, attention_map

# Student map (1 x 2 channels x 1 x 2): channel 0 = [1, 0], channel 1 = [1, 2].
#   mean over channels of a^2 = [(1 + 1)/2, (0 + 4)/2] = [1, 2]; / sqrt(5) -> [0.4472136, 0.8944272]
# Teacher map (1 x 1 x 1 x 2) = [3, 0]: a^2 = [9, 0] -> [1, 0]
# (q_s - q_t)^2 = [(0.4472136 - 1)^2, 0.8944272^2] = [0.3055728, 0.8]; mean = 0.5527864 (= 1 - 1/sqrt(5))
S = torch.tensor([[[[1.0, 0.0]], [[1.0, 2.0]]]])
T = torch.tensor([[[[3.0, 0.0]]]])


def test_attention_map_by_hand():
    assert attention_map(S)[0].tolist() == pytest.approx([1 / math.sqrt(5), 2 / math.sqrt(5)], abs=1e-6)
    assert attention_map(T)[0].tolist() == pytest.approx([1.0, 0.0])


def test_at_loss_by_hand():
    assert at_loss(S, T).item() == pytest.approx(0.5527864, abs=1e-6)
    assert at_loss(S, T).item() == pytest.approx(1 - 1 / math.sqrt(5), abs=1e-6)


def test_sign_and_scale_do_not_matter():
    # a^2 drops the sign; the L2 normalisation drops the scale: teacher -7 * [3, 0] gives the same loss
    assert at_loss(S, -7 * T).item() == pytest.approx(0.5527864, abs=1e-6)
    assert at_loss(S, S * 10).item() == pytest.approx(0.0, abs=1e-7)
