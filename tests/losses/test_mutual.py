"""Deep mutual learning loss against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from compress.losses.mutual import Peers, mutual_loss

E = math.e


def test_two_peers_by_hand():
    # peer A [1, 0], peer B [0, 1], label 0, T = 1:
    #   CE_A = log(1 + e) - 1 = 0.3132617; CE_B = log(1 + e) = 1.3132617
    #   KL(p_B || p_A) = KL(p_A || p_B) = (e - 1)/(e + 1) = 0.4621172 (mirror images)
    # alpha = 0.5: 0.5 * (0.3132617 + 1.3132617) + 0.5 * (2 * 0.4621172) = 0.8132617 + 0.4621172 = 1.2753789
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    got = mutual_loss([a, b], torch.tensor([0]), 1.0, 0.5).item()
    assert got == pytest.approx(0.5 * (2 * math.log(1 + E) - 1) + (E - 1) / (E + 1), abs=1e-6)
    assert got == pytest.approx(1.2753789, abs=1e-6)


def test_three_peers_learn_from_the_mean_of_the_others():
    # peers [0, 0], [ln 9, 0], [-ln 9, 0]: softmax = [.5, .5], [.9, .1], [.1, .9]
    # peer 0's target = mean([.9, .1], [.1, .9]) = [.5, .5] = its own: KL 0, so with alpha = 0 its term is 0.
    # peer 1's target = mean([.5, .5], [.1, .9]) = [.3, .7]:
    #   KL = .3 log(.3/.9) + .7 log(.7/.1) = .3 * (-1.0986123) + .7 * 1.9459101 = -0.3295837 + 1.3621371 = 1.0325534
    # peer 2 mirrors peer 1: 1.0325534. Total (alpha = 0, T = 1) = 2.0651068
    z = [torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(9), 0.0]]), torch.tensor([[-math.log(9), 0.0]])]
    assert mutual_loss(z, torch.tensor([0]), 1.0, 0.0).item() == pytest.approx(2.0651068, abs=1e-5)


def test_gradients_do_not_flow_into_the_targets():
    a = torch.tensor([[1.0, 0.0]], requires_grad=True)
    b = torch.tensor([[0.0, 1.0]], requires_grad=True)
    mutual_loss([a, b], torch.tensor([0]), 1.0, 0.0).backward()
    # d KL(p_B || p_A) / d a = p_A - p_B = [0.4621172, -0.4621172]: only a's own term reaches a
    assert a.grad[0].tolist() == pytest.approx([0.4621172, -0.4621172], abs=1e-6)


def test_peers_start_apart_and_forward_peer_zero():
    torch.manual_seed(1)  # the pipeline seeds the student with recipe seed + 1: a peer must not repeat it
    first = nn.Linear(3, 2)
    peers = Peers(first, 3, seed=0)
    x = torch.ones(1, 3)
    assert torch.equal(peers(x), first(x)) and len(peers.last) == 3
    assert not torch.equal(peers.peers[1].weight, first.weight)
    assert not torch.equal(peers.peers[1].weight, peers.peers[2].weight)
