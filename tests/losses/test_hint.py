"""FitNets hints: projectors and the mean squared error, against values worked out by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.losses.base import Batch, LayerError
from compress.losses.hint import HintConfig, HintTerm, make_projector


def hint(pairs, projectors, s_feats, t_feats):
    cfg = HintConfig.model_validate({"kind": "hint", "pairs": pairs})
    term = HintTerm(cfg.pairs, projectors)
    return term(Batch(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), None, s_feats, t_feats))


def test_same_shape_needs_no_projector():
    # student [1, 2], teacher [3, 5] (a 1 x 1 x 2 map): ((1 - 3)^2 + (2 - 5)^2) / 2 = (4 + 9) / 2 = 6.5
    proj = make_projector((1, 1, 2), (1, 1, 2), ("pairs", 0))
    assert isinstance(proj, nn.Identity)
    got = hint([{"teacher": "t", "student": "s"}], [proj], {"s": torch.tensor([[[[1.0, 2.0]]]])},
               {"t": torch.tensor([[[[3.0, 5.0]]]])})
    assert got.item() == pytest.approx(6.5)


def test_conv_projector_maps_channels():
    # 2 student channels -> 1 teacher channel by a 1x1 conv with weights [1, 1]: 1 + 2 = 3; (3 - 5)^2 = 4
    proj = make_projector((2, 1, 1), (1, 1, 1), ("pairs", 0))
    assert isinstance(proj, nn.Conv2d) and proj.kernel_size == (1, 1) and proj.bias is None
    with torch.no_grad():
        proj.weight.copy_(torch.tensor([1.0, 1.0]).view(1, 2, 1, 1))
    got = hint([{"teacher": "t", "student": "s"}], [proj], {"s": torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)},
               {"t": torch.tensor([5.0]).view(1, 1, 1, 1)})
    assert got.item() == pytest.approx(4.0)


def test_linear_projector_and_pair_weight():
    # W = [[1, 0, 0], [0, 1, 1]]: [1, 2, 3] -> [1, 5]; vs [0, 0]: (1 + 25) / 2 = 13; pair weight 0.5 -> 6.5
    proj = make_projector((3,), (2,), ("pairs", 0))
    assert isinstance(proj, nn.Linear)
    with torch.no_grad():
        proj.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]))
    got = hint([{"teacher": "t", "student": "s", "weight": 0.5}], [proj], {"s": torch.tensor([[1.0, 2.0, 3.0]])},
               {"t": torch.zeros(1, 2)})
    assert got.item() == pytest.approx(6.5)


def test_projector_gets_gradients():
    proj = make_projector((2, 1, 1), (3, 1, 1), ("pairs", 0))
    hint([{"teacher": "t", "student": "s"}], [proj], {"s": torch.ones(1, 2, 1, 1)}, {"t": torch.ones(1, 3, 1, 1)}).backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("s_shape, t_shape, words", [
    ((8, 8, 8), (16, 4, 4), "differ in H x W"),
    ((8, 8, 8), (128,), "no projector maps"),
])
def test_unmappable_shapes_are_named(s_shape, t_shape, words):
    with pytest.raises(LayerError, match=words) as info:
        make_projector(s_shape, t_shape, ("pairs", 0))
    assert info.value.key == "pairs[0]"
