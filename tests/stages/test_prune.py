"""Structured pruning of a trained CNN with torch-pruning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.errors import StageError
from compress.stages.prune import PruneConfig, channel_table, count_macs_params, prune


def cfg(**kw) -> PruneConfig:
    return PruneConfig.model_validate({"type": "prune", **kw})


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def conv_channels(model):
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.fixture
def art(trained_cnn, as_artifact):
    return as_artifact(trained_cnn)


@pytest.mark.parametrize("importance", ["l1", "l2", "taylor", "bn_scale"])
def test_prune_half_of_every_layer(importance, art, trained_cnn, make_ctx, splits):
    before_state, before_table = snapshot(trained_cnn), channel_table(trained_cnn)
    out = prune(art, cfg(ratio=0.5, importance=importance), make_ctx())

    model = out.model
    assert model is not trained_cnn
    x = torch.from_numpy(splits.val.x[:16])
    with torch.no_grad():
        y = model.eval()(x)
    assert y.shape == (16, 10) and torch.isfinite(y).all()

    # 8 -> 4 and 16 -> 8 channels; the classifier keeps its 10 outputs (and takes 8 channels x 2x2 = 32 features)
    assert conv_channels(model) == [4, 8]
    assert model.classifier.out_features == 10 and model.classifier.in_features == 32
    assert [(b.num_features) for b in model.modules() if isinstance(b, nn.BatchNorm2d)] == [4, 8]
    assert out.info["layers"] == [{"layer": "features.0", "before": 8, "after": 4},
                                  {"layer": "features.3", "before": 16, "after": 8},
                                  {"layer": "classifier", "before": 10, "after": 10}]

    macs, params = count_macs_params(model, splits.input_shape)
    assert (out.macs, out.params) == (macs, params)
    assert params < art.params and macs < art.macs
    # params by hand: conv 1->4: 36, BN 8, conv 4->8: 288, BN 16, Linear(32, 10): 330 -> 678
    assert params == 678
    assert out.info["params_before"] == art.params == 1922 and out.info["params_after"] == 678
    assert out.info["macs_before"] == art.macs and out.info["macs_after"] == macs

    assert out.format == "torch" and out.name == "prune" and out.lineage == ("student",)
    # the input artifact's model is untouched
    assert channel_table(trained_cnn) == before_table
    for k, v in trained_cnn.state_dict().items():
        assert torch.equal(v, before_state[k]), k
    assert art.model is trained_cnn and art.params == 1922


def test_kept_channels_keep_their_weights(art, make_ctx, trained_cnn):
    """Every kept filter of the first conv is one of the original filters, unchanged (channels are removed, not re-fit)."""
    out = prune(art, cfg(ratio=0.5, importance="l1"), make_ctx())
    orig = trained_cnn.features[0].weight.detach()
    kept = out.model.features[0].weight.detach()
    for f in kept:
        assert any(torch.equal(f, o) for o in orig)
    # l1: the kept first-layer filters are ranked by the group's L1 magnitude; at least they are distinct
    assert len({tuple(f.flatten().tolist()) for f in kept}) == 4


def test_round_to_gives_multiples(art, make_ctx):
    plain = prune(art, cfg(ratio=0.3), make_ctx())
    assert conv_channels(plain.model) == [5, 11]  # 8 * 0.7 = 5.6, 16 * 0.7 = 11.2: not multiples of 4
    rounded = prune(art, cfg(ratio=0.3, round_to=4), make_ctx())
    chans = conv_channels(rounded.model)
    assert all(c % 4 == 0 and c > 0 for c in chans), chans
    assert all(row["after"] % 4 == 0 for row in rounded.info["layers"] if row["layer"] != "classifier")


def test_global_pruning(art, make_ctx):
    out = prune(art, cfg(ratio=0.5, **{"global": True}), make_ctx())
    assert out.params < art.params
    chans = conv_channels(out.model)
    # global: half of all 8 + 16 = 24 prunable channels go, wherever they rank lowest
    assert abs(sum(chans) - 12) <= 1
    assert all(c >= 1 for c in chans)
    assert out.model.classifier.out_features == 10


@pytest.mark.parametrize("importance", ["l2", "taylor"])
def test_iterative_steps_reach_the_ratio(art, make_ctx, importance, splits):
    out = prune(art, cfg(ratio=0.5, iterative_steps=3, importance=importance), make_ctx())
    assert conv_channels(out.model) == [4, 8]
    assert out.model.eval()(torch.from_numpy(splits.val.x[:4])).shape == (4, 10)


def test_prune_mlp_keeps_classifier(trained_mlp, as_artifact, make_ctx):
    art = as_artifact(trained_mlp)
    out = prune(art, cfg(ratio=0.25), make_ctx())
    linears = [m for m in out.model.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [48, 48, 10]
    assert out.params < art.params


class NoBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU())
        self.classifier = nn.Linear(6 * 64, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def test_bn_scale_without_batchnorm_is_a_stage_error(make_ctx, as_artifact):
    art = as_artifact(NoBN().eval())
    with pytest.raises(StageError, match="importance 'bn_scale' needs BatchNorm layers.*use l1, l2 or taylor"):
        prune(art, cfg(ratio=0.5, importance="bn_scale"), make_ctx())
    # the other importances work on it
    out = prune(art, cfg(ratio=0.5, importance="l1"), make_ctx())
    assert conv_channels(out.model) == [3, 3]


def test_config_validation():
    with pytest.raises(ValueError):
        cfg()  # ratio is required
    for bad in (0, 1, 1.5):
        with pytest.raises(ValueError):
            cfg(ratio=bad)
    assert cfg(ratio=0.2, **{"global": True}).global_pruning is True


def test_hidden_layers_as_wide_as_the_class_count_are_pruned(make_ctx, as_artifact):
    from compress.models.zoo import mlp

    torch.manual_seed(0)
    art = as_artifact(mlp((1, 8, 8), 10, width=10, depth=2).eval())
    out = prune(art, cfg(ratio=0.5), make_ctx())
    assert [row["after"] for row in out.info["layers"]] == [5, 5, 10]
    assert out.params < art.params
