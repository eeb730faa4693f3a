"""Structured pruning of a trained CNN with torch-pruning."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compress.errors import StageError
from compress.stages.prune import PruneConfig, channel_table, count_macs_params, prune
from compress.training import accuracy


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
    out = prune(art, cfg(ratio=0.5, importance=importance, round_to=None), make_ctx())

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
    # the channel table: asked ratio (none for the classifier), the fraction actually removed, the marker
    assert out.info["layers"] == [
        {"layer": "features.0", "before": 8, "after": 4, "asked": 0.5, "cut": 0.5, "deeper_than_asked": False},
        {"layer": "features.3", "before": 16, "after": 8, "asked": 0.5, "cut": 0.5, "deeper_than_asked": False},
        {"layer": "classifier", "before": 10, "after": 10, "asked": None, "cut": 0.0, "deeper_than_asked": False}]

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
    out = prune(art, cfg(ratio=0.5, importance="l1", round_to=None), make_ctx())
    orig = trained_cnn.features[0].weight.detach()
    kept = out.model.features[0].weight.detach()
    for f in kept:
        assert any(torch.equal(f, o) for o in orig)
    # l1: the kept first-layer filters are ranked by the group's L1 magnitude; at least they are distinct
    assert len({tuple(f.flatten().tolist()) for f in kept}) == 4


def test_round_to_gives_multiples(art, make_ctx):
    plain = prune(art, cfg(ratio=0.3, round_to=None), make_ctx())
    assert conv_channels(plain.model) == [5, 11]  # 8 * 0.7 = 5.6, 16 * 0.7 = 11.2: not multiples of 4
    rounded = prune(art, cfg(ratio=0.3, round_to=4), make_ctx())
    # the nearest multiples of 4 to 5.6 and 11.2 are 4 and 12 (torch-pruning's own round_to rounds down: 4 and 8);
    # 8 -> 4 would remove 50 % > 0.3 + 0.1, so the first layer rounds up, to all of its 8
    assert conv_channels(rounded.model) == [8, 12]
    assert all(row["after"] % 4 == 0 for row in rounded.info["layers"] if row["layer"] != "classifier")
    assert not any(row["deeper_than_asked"] for row in rounded.info["layers"])


def test_default_rounds_to_multiples_of_8(art, make_ctx):
    assert cfg(ratio=0.3).round_to == 8
    # 8 channels: at the minimum, not pruned; 16 * 0.7 = 11.2 is nearest 8, but 16 -> 8 removes 50 % > 0.3 + 0.1:
    # rounded up, to 16 (before the cap: [8, 8])
    out = prune(art, cfg(ratio=0.3), make_ctx())
    assert conv_channels(out.model) == [8, 16]
    assert out.info["notes"] == ["round_to 8: every layer keeps the multiple of 8 nearest to (1 - ratio) x its channels, "
                                 "or the next one up where that would remove more than ratio + 0.1 of them; "
                                 "features.0, features.3 kept all of theirs (at 8 or fewer, or too few to remove at this "
                                 "granularity); round_to: null prunes exactly the ratio."]
    # 16 * 0.75 = 12 is halfway between 8 and 16: ties go to 8, which removes 50 % > 0.25 + 0.1: 16 (before: [8, 8])
    assert conv_channels(prune(art, cfg(ratio=0.25), make_ctx()).model) == [8, 16]
    # at 0.4 the cap is 50 %: 16 -> 8 is allowed
    out = prune(art, cfg(ratio=0.4), make_ctx())
    assert conv_channels(out.model) == [8, 8]
    assert [r["deeper_than_asked"] for r in out.info["layers"]] == [False, True, False]  # 50 % removed, 40 % asked
    assert any(n.startswith("cut deeper than asked (deeper_than_asked in the channel table; round_to 8 may remove up to "
                            "the asked ratio + 0.1 of a layer): 16 -> 8 (50% removed, 40% asked): features.3")
               for n in out.info["notes"])
    # 16 * 0.9 = 14.4 -> 16: nothing to remove at this granularity
    out = prune(art, cfg(ratio=0.1), make_ctx())
    assert conv_channels(out.model) == [8, 16] and out.params == art.params


# (width, ratio, round_to) -> channels kept, worked by hand: nearest multiple of round_to to width x (1 - ratio)
# (ties down, at least round_to, at most width); if that removes more than ratio + 0.1 of the layer, the smallest
# multiple that does not, capped at width.
KEPT = [
    (16, 0.3, 8, 16),   # 11.2 -> nearest 8 removes 50 % > 40 %; least allowed 9.6 -> 16
    (32, 0.3, 8, 24),   # 22.4 -> 24 (25 %)
    (64, 0.3, 8, 48),   # 44.8 -> 48 (25 %)
    (24, 0.3, 8, 16),   # 16.8 -> 16 (33 %, within 40 %)
    (40, 0.3, 8, 24),   # 28 is halfway: ties down to 24, exactly 40 % removed: allowed
    (48, 0.3, 8, 32),   # 33.6 -> 32 (33 %)
    (96, 0.3, 8, 64),   # 67.2 -> 64 (33 %)
    (16, 0.25, 8, 16),  # 12 is halfway: 8 removes 50 % > 35 %; least 10.4 -> 16
    (16, 0.4, 8, 8),    # 9.6 -> 8, exactly 50 % = 0.4 + 0.1: allowed
    (20, 0.45, 8, 16),  # 11 -> 8 removes 60 % > 55 %; least 9 -> 16
    (12, 0.2, 8, 12),   # 9.6 -> 8 removes 33 % > 30 %; least 8.4 -> 16, capped at 12
    (12, 0.3, 8, 8),    # 8.4 -> 8 (33 %, within 40 %)
    (40, 0.7, 8, 8),    # 12 is halfway: 8, 80 % removed = 0.7 + 0.1: allowed
    (16, 0.9, 8, 8),    # 1.6 -> at least round_to: 8 (50 %, less than asked)
    (8, 0.5, 8, 8),     # at round_to or fewer: kept whole
    (64, 0.0, 8, 64),   # nothing asked
    (8, 0.3, 4, 8),     # 5.6 -> 4 removes 50 % > 40 %; least 4.8 -> 8
    (16, 0.3, 4, 12),   # 11.2 -> 12 (25 %)
    (48, 0.5, 32, 32),  # 24 -> at least 32 (33 %)
    (16, 0.3, None, 11),  # no rounding: int(16 x 0.7), torch-pruning's count
]


@pytest.mark.parametrize("width, ratio, round_to, kept", KEPT)
def test_kept_channels_table(width, ratio, round_to, kept):
    from compress.stages.prune import kept_channels

    assert kept_channels(width, ratio, round_to) == kept
    if round_to and ratio:  # the rule itself: never more than ratio + 0.1 removed unless at the round_to floor
        assert kept == width or kept % round_to == 0
        assert 1 - kept / width <= ratio + 0.1 + 1e-9 or kept == round_to


def test_kept_channels_never_cut_beyond_ratio_plus_0_1():
    from compress.stages.prune import kept_channels

    for round_to in (4, 8, 16):
        for width in range(1, 257):
            for ratio in (0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9):
                keep = kept_channels(width, ratio, round_to)
                assert min(width, round_to) <= keep <= width
                assert keep == width or keep % round_to == 0
                if keep > round_to:  # above the floor of one multiple, the cap holds
                    assert 1 - keep / width <= ratio + 0.1 + 1e-9, (width, ratio, round_to, keep)
                    # and rounding up went no further than needed: one multiple less would break the cap
                    assert keep == width or 1 - (keep - round_to) / width > ratio + 0.1 - 1e-9 \
                        or abs(keep - width * (1 - ratio)) <= round_to / 2 + 1e-9


def test_layer_ratios_per_layer(art, make_ctx):
    # features.3 asks for more than the stage ratio, features.0 is kept whole
    out = prune(art, cfg(ratio=0.3, round_to=None, layer_ratios={"features.3": 0.5, "features.0": 0}), make_ctx())
    assert conv_channels(out.model) == [8, 8]
    rows = {r["layer"]: r for r in out.info["layers"]}
    assert (rows["features.0"]["asked"], rows["features.3"]["asked"], rows["classifier"]["asked"]) == (0, 0.5, None)
    # a container's name covers every layer inside it; the longest name wins
    out = prune(art, cfg(ratio=0.5, round_to=None, layer_ratios={"features": 0.25, "features.0": 0}), make_ctx())
    assert conv_channels(out.model) == [8, 12]
    # no stage ratio: only the named layers lose channels; the +0.1 cap applies to the layer's own ratio
    out = prune(art, cfg(layer_ratios={"features.3": 0.45}), make_ctx())
    assert conv_channels(out.model) == [8, 8]  # 16 x 0.55 = 8.8 -> 8, 50 % <= 55 %
    assert [r["deeper_than_asked"] for r in out.info["layers"]] == [False, True, False]
    out = prune(art, cfg(layer_ratios={"features.3": 0.3}), make_ctx())
    assert conv_channels(out.model) == [8, 16]  # 8 would remove 50 % > 40 %


def test_layer_ratios_validation(art, make_ctx, trained_cnn, splits):
    from compress.stages.prune import layer_ratio_problem

    with pytest.raises(ValueError, match=r"layer_ratios: 'features.0': 1.0 is out of range; a ratio is in \[0, 1\)"):
        cfg(ratio=0.3, layer_ratios={"features.0": 1.0})
    with pytest.raises(ValueError, match="with 'target' the stage decides .* 'features.0' asks for more"):
        cfg(target={"macs": 0.5}, layer_ratios={"features.0": 0.5})
    assert cfg(target={"macs": 0.5}, layer_ratios={"features.0": 0}).layer_ratios == {"features.0": 0}
    assert cfg(layer_ratios={"features.0": 0.5}).ratio is None
    with pytest.raises(ValueError, match="give 'ratio'"):
        cfg(layer_ratios={"features.0": 0})

    shape = splits.input_shape
    assert layer_ratio_problem(trained_cnn, cfg(ratio=0.3, layer_ratios={"features": 0.2}), shape) is None
    key, msg = layer_ratio_problem(trained_cnn, cfg(ratio=0.3, layer_ratios={"feature.3": 0.2}), shape)
    assert key == "feature.3"
    assert msg == ("the model has no layer named 'feature.3'; did you mean 'features.3'? valid layer names: "
                   "features.0, features.3 (or a module containing them)")
    key, msg = layer_ratio_problem(trained_cnn, cfg(ratio=0.3, layer_ratios={"classifier": 0.2}), shape)
    assert key == "classifier" and "is the classifier (its outputs are the class scores), which is never pruned" in msg
    key, msg = layer_ratio_problem(trained_cnn, cfg(ratio=0.3, layer_ratios={"features.1": 0.2}), shape)
    assert msg.startswith("'features.1' (BatchNorm2d) contains no prunable layer")
    # the stage refuses it too (for callers that skip the recipe check)
    with pytest.raises(StageError, match="prune: layer_ratios: the model has no layer named 'nope'"):
        prune(art, cfg(ratio=0.3, layer_ratios={"nope": 0.2}), make_ctx())


def test_coupled_layers_follow_a_named_layer(make_ctx, as_artifact):
    """A residual add couples two convs: they lose the same channels, at the ratio named for either of them
    (the smallest when both are named), and the channel table shows that ratio as asked of both."""

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(1, 16, 3, padding=1)
            self.b = nn.Conv2d(16, 16, 3, padding=1)
            self.classifier = nn.Linear(16, 10)

        def forward(self, x):
            y = self.a(x)
            y = y + self.b(torch.relu(y))
            return self.classifier(y.mean((2, 3)))

    torch.manual_seed(0)
    art = as_artifact(Res().eval())
    out = prune(art, cfg(ratio=0.5, round_to=None, layer_ratios={"b": 0.25}), make_ctx())
    assert (out.model.a.out_channels, out.model.b.out_channels) == (12, 12)
    assert [(r["layer"], r["asked"], r["cut"]) for r in out.info["layers"]] == [("a", 0.25, 0.25), ("b", 0.25, 0.25),
                                                                                ("classifier", None, 0.0)]
    out = prune(art, cfg(ratio=0.3, round_to=None, layer_ratios={"b": 0.75}), make_ctx())
    assert (out.model.a.out_channels, out.model.b.out_channels) == (4, 4)
    out = prune(art, cfg(ratio=0.5, round_to=None, layer_ratios={"a": 0.25, "b": 0.75}), make_ctx())
    assert (out.model.a.out_channels, out.model.b.out_channels) == (12, 12)
    out = prune(art, cfg(ratio=0.5, round_to=None, layer_ratios={"a": 0}), make_ctx())
    assert (out.model.a.out_channels, out.model.b.out_channels) == (16, 16)
    x = torch.zeros(2, 1, 8, 8)
    assert out.model(x).shape == (2, 10)


def test_global_pruning(art, make_ctx):
    out = prune(art, cfg(ratio=0.5, round_to=None, **{"global": True}), make_ctx())
    assert out.params < art.params
    chans = conv_channels(out.model)
    # global: half of all 8 + 16 = 24 prunable channels go, wherever they rank lowest
    assert abs(sum(chans) - 12) <= 1
    assert all(c >= 1 for c in chans)
    assert out.model.classifier.out_features == 10


@pytest.mark.parametrize("importance", ["l2", "taylor"])
def test_iterative_steps_reach_the_ratio(art, make_ctx, importance, splits):
    out = prune(art, cfg(ratio=0.5, iterative_steps=3, importance=importance, round_to=None), make_ctx())
    assert conv_channels(out.model) == [4, 8]
    assert out.model.eval()(torch.from_numpy(splits.val.x[:4])).shape == (4, 10)


def test_prune_mlp_keeps_classifier(trained_mlp, as_artifact, make_ctx):
    art = as_artifact(trained_mlp)
    out = prune(art, cfg(ratio=0.25, round_to=None), make_ctx())
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
    out = prune(art, cfg(ratio=0.5, importance="l1", round_to=None), make_ctx())
    assert conv_channels(out.model) == [3, 3]


def test_config_validation():
    with pytest.raises(ValueError, match=r"give 'ratio' \(fraction of channels to remove, e.g. 0.3\) or 'target'"):
        cfg()
    with pytest.raises(ValueError, match="give either 'ratio' .* or 'target' .*, not both"):
        cfg(ratio=0.3, target={"macs": 0.5})
    with pytest.raises(ValueError, match="'iterative_steps' is for 'ratio'"):
        cfg(target={"macs": 0.5}, iterative_steps=3)
    with pytest.raises(ValueError, match="a target needs at least one of macs, params, latency_ms, speedup"):
        cfg(target={})
    for bad in ({"macs": 1.0}, {"params": 0}, {"latency_ms": -1}, {"speedup": 1.0}, {"flops": 0.5}):
        with pytest.raises(ValueError):
            cfg(target=bad)
    assert cfg(head_ratio=0.5).ratio is None  # heads only
    for bad in (0, 1, 1.5):
        with pytest.raises(ValueError):
            cfg(ratio=bad)
    assert cfg(ratio=0.2, **{"global": True}).global_pruning is True


def test_hidden_layers_as_wide_as_the_class_count_are_pruned(make_ctx, as_artifact):
    from compress.models.zoo import mlp

    torch.manual_seed(0)
    art = as_artifact(mlp((1, 8, 8), 10, width=10, depth=2).eval())
    out = prune(art, cfg(ratio=0.5, round_to=None), make_ctx())
    assert [row["after"] for row in out.info["layers"]] == [5, 5, 10]
    assert out.params < art.params


# --- targets ------------------------------------------------------------------------------------


def test_macs_target_lands_on_the_target(art, make_ctx, splits):
    out = prune(art, cfg(target={"macs": 0.5}, round_to=None), make_ctx())
    steps = out.info["steps"]
    assert out.info["target_met"] and out.info["kept_step"] == len(steps) - 1
    assert out.macs <= 0.5 * art.macs
    # the last step was cut back: one channel fewer removed would miss the target, so it is close to 50 %
    assert out.macs > 0.4 * art.macs
    assert [s["macs"] for s in steps] == sorted((s["macs"] for s in steps), reverse=True)
    assert [s["met"] for s in steps] == [False] * (len(steps) - 1) + [True]
    assert steps[0]["macs"] == art.macs and steps[-1]["macs"] == out.macs
    assert (out.info["macs_before"], out.info["macs_after"]) == (art.macs, out.macs)
    # every step is in the report table, with its val accuracy measured on the val split
    table = out.info["tables"][0]
    assert [r[0] for r in table["rows"]] == list(range(len(steps)))
    assert table["rows"][-1][-1] == "kept"
    assert steps[-1]["val_accuracy"] == pytest.approx(accuracy(out.model, splits.val.x, splits.val.y))
    assert out.info["notes"][0].startswith(f"target met at step {len(steps) - 1}: ")
    assert steps[0]["p50_ms"] is None  # no latency goal: nothing timed


def test_params_and_macs_together(art, make_ctx):
    out = prune(art, cfg(target={"macs": 0.6, "params": 0.4}, round_to=None), make_ctx())
    assert out.info["target_met"]
    assert out.macs <= 0.6 * art.macs and out.params <= 0.4 * art.params


def test_rounded_target_keeps_multiples(art, make_ctx):
    out = prune(art, cfg(target={"macs": 0.5}, round_to=4), make_ctx())
    assert out.info["target_met"] and out.macs <= 0.5 * art.macs
    assert all(c % 4 == 0 for c in conv_channels(out.model))


@pytest.mark.parametrize("goal, text", [({"latency_ms": 1e-6}, "latency_ms 1e-06"), ({"speedup": 1000}, "speedup 1000.0")])
def test_unreachable_latency_keeps_the_fastest_and_says_so(art, make_ctx, goal, text):
    out = prune(art, cfg(target=goal, max_steps=3, patience=3, latency_rounds=3, round_to=None), make_ctx())
    steps = out.info["steps"]
    assert not out.info["target_met"] and len(steps) == 4  # step 0 (the input) + 3 steps
    fastest = max(s["speedup"] for s in steps)  # over the input, timed in the same rounds
    kept = out.info["kept_step"]
    assert steps[kept]["speedup"] >= fastest * 0.97
    assert all(s["speedup"] < fastest * 0.97 for s in steps[:kept])  # the least-pruned of the fastest
    assert (out.macs, out.params) == (steps[kept]["macs"], steps[kept]["params"])
    assert any(n.startswith(f"target not met ({text}): kept step {kept}") for n in out.info["notes"])


def test_latency_target_met_by_the_input_prunes_nothing(art, make_ctx):
    out = prune(art, cfg(target={"latency_ms": 1000.0}, latency_rounds=3), make_ctx())
    assert out.info["target_met"] and out.info["kept_step"] == 0 and len(out.info["steps"]) == 1
    assert out.params == art.params and out.macs == art.macs
    assert out.info["notes"] == ["the input model already meets the target: nothing was pruned."]
    assert out.info["steps"][0]["p50_ms"] > 0 and out.info["steps"][0]["speedup"] == 1.0


def test_nothing_left_to_prune_stops(art, make_ctx):
    # round_to 8 on an 8-16 CNN: 16 -> 8, then every layer is at its minimum; 1 % of the MACs is out of reach
    out = prune(art, cfg(target={"macs": 0.01}), make_ctx())
    assert not out.info["target_met"] and conv_channels(out.model) == [8, 8]
    assert any("nothing left to prune" in n for n in out.info["notes"])


def test_recovery_steps_distil_between_steps(art, make_ctx, trained_cnn, splits):
    ctx = make_ctx(teacher=trained_cnn)
    plain = prune(art, cfg(target={"macs": 0.3}, round_to=None), ctx)
    rec = prune(art, cfg(target={"macs": 0.3}, round_to=None, recover_steps=30), ctx)
    assert rec.info["target_met"] and rec.macs <= 0.3 * art.macs
    # 30 KD steps after each pruning step win back accuracy lost by pruning alone (seeded: deterministic)
    assert rec.info["steps"][-1]["val_accuracy"] > plain.info["steps"][-1]["val_accuracy"]
    assert any(n.startswith("recovery: 30 optimizer steps of KD") for n in rec.info["notes"])
    # ratio mode too: between torch-pruning's iterative steps
    out = prune(art, cfg(ratio=0.5, iterative_steps=2, recover_steps=5, round_to=None), ctx)
    assert conv_channels(out.model) == [4, 8]


def test_head_ratio_needs_attention(art, make_ctx):
    with pytest.raises(StageError, match="'head_ratio' removes attention heads of the built-in transformer"):
        prune(art, cfg(ratio=0.3, head_ratio=0.5), make_ctx())


# --- transformer: heads and MLP hidden units ------------------------------------------------------


@pytest.fixture(scope="module")
def trained_transformer():
    """transformer(width 16, depth 2, 4 heads of 4 dims, MLP hidden 32), seeded initial weights: the tests
    check structure and exactness, which need no training (training it costs seconds per epoch)."""
    from compress.models.zoo import transformer

    torch.manual_seed(0)
    return transformer((1, 8, 8), 10, width=16, depth=2, heads=4).eval()


def linear_widths(model):
    return {n: (m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def test_transformer_heads_and_hidden_units_shrink(trained_transformer, as_artifact, make_ctx, splits, tmp_path):
    import onnxruntime as ort

    from compress._onnx import export_onnx
    from compress.stages.prune import head_table

    art = as_artifact(trained_transformer)
    out = prune(art, cfg(ratio=0.5, head_ratio=0.5, round_to=None), make_ctx())
    model = out.model
    assert head_table(model) == {"features.1.attn": 2, "features.2.attn": 2}
    w = linear_widths(model)
    for b in (1, 2):
        assert w[f"features.{b}.attn.qkv"] == (16, 24)  # 2 heads x 4 dims x (q, k, v)
        assert w[f"features.{b}.attn.proj"] == (8, 16)
        assert w[f"features.{b}.mlp.fc1"] == (16, 16)  # hidden 32 -> 16
        assert w[f"features.{b}.mlp.fc2"] == (16, 16)
    assert w["features.0.proj"] == (4, 16) and w["classifier"] == (16, 10)  # residual width and classes kept
    rows = {r["layer"]: (r["before"], r["after"]) for r in out.info["layers"]}
    assert rows["features.1.attn (heads)"] == (4, 2) and rows["features.2.mlp.fc1"] == (32, 16)
    assert out.params < art.params and out.macs < art.macs
    assert head_table(trained_transformer) == {"features.1.attn": 4, "features.2.attn": 4}  # input untouched

    # the pruned model exports to ONNX and onnxruntime agrees with torch
    path = export_onnx(model, splits.input_shape, tmp_path / "t.onnx")
    x = splits.val.x[:64]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(x)).numpy()
    assert abs(got - want).max() < 1e-4

    # heads only: the MLP keeps its 32 hidden units
    heads_only = prune(art, cfg(head_ratio=0.25), make_ctx()).model
    assert head_table(heads_only) == {"features.1.attn": 3, "features.2.attn": 3}
    assert linear_widths(heads_only)["features.1.mlp.fc1"] == (16, 32)


def test_removing_a_dead_head_changes_nothing(trained_transformer, as_artifact, make_ctx, splits):
    """Zero one head's q/k/v rows and its proj columns in every block: that head contributes nothing and
    ranks lowest, so pruning one head of four must remove exactly it: the outputs stay the same."""
    model = copy.deepcopy(trained_transformer)
    with torch.no_grad():
        for b in (1, 2):
            attn = model.features[b].attn
            for part in range(3):  # q, k, v blocks of the fused layer; head 1 holds dims 4..7 of each
                attn.qkv.weight[part * 16 + 4: part * 16 + 8] = 0
                attn.qkv.bias[part * 16 + 4: part * 16 + 8] = 0
            attn.proj.weight[:, 4:8] = 0
    out = prune(as_artifact(model), cfg(head_ratio=0.25), make_ctx()).model
    x = torch.from_numpy(splits.val.x[:32])
    with torch.no_grad():
        torch.testing.assert_close(out.eval()(x), model.eval()(x), atol=1e-5, rtol=1e-5)


def test_pruned_transformer_survives_the_checkpoint(trained_transformer, as_artifact, make_ctx, splits, tmp_path):
    """The stage cache saves pruned models as safetensors and loads them into a fresh model: the head
    count follows the qkv layer's width, so it comes back too."""
    from compress.models.checkpoint import load_model_bytes, save_model
    from compress.models.zoo import transformer

    out = prune(as_artifact(trained_transformer), cfg(ratio=0.5, head_ratio=0.5), make_ctx()).model
    data = save_model(out, tmp_path / "m.safetensors").read_bytes()
    back = load_model_bytes(transformer((1, 8, 8), 10, width=16, depth=2, heads=4), data, "m")
    x = torch.from_numpy(splits.val.x[:8])
    with torch.no_grad():
        torch.testing.assert_close(back(x), out.eval()(x))


# --- text_transformer: the same pruning over byte tokens ------------------------------------------


@pytest.mark.parametrize("patch", [1, 4])
def test_text_transformer_heads_and_hidden_units_shrink(as_artifact, text_splits, tmp_path, patch):
    """Heads and MLP hidden units go; the byte embedding (the residual width) and the classifier stay whole,
    and the pruned model still exports to ONNX with torch's logits."""
    import onnxruntime as ort

    from compress._onnx import export_onnx
    from compress.context import Context
    from compress.models.zoo import text_transformer
    from compress.recipe import parse_recipe
    from compress.stages.prune import head_table

    torch.manual_seed(0)
    model = text_transformer(text_splits.input_shape, 8, width=16, depth=2, heads=4, patch=patch).eval()
    recipe = parse_recipe({"name": "t", "data": {"source": "stdlib-text", "length": 32},
                           "teacher": {"model": {"arch": "text_transformer", "width": 16}},
                           "student": {"model": {"arch": "text_transformer", "width": 16}}, "stages": [{"type": "export"}]})
    ctx = Context(recipe=recipe, splits=text_splits, teacher=model, out_dir=tmp_path, quiet=True)
    art = as_artifact(model, text_splits.input_shape)
    out = prune(art, cfg(ratio=0.5, head_ratio=0.5, round_to=None), ctx)
    assert head_table(out.model) == {"features.1.attn": 2, "features.2.attn": 2}
    w = linear_widths(out.model)
    for b in (1, 2):
        assert w[f"features.{b}.attn.qkv"] == (16, 24) and w[f"features.{b}.mlp.fc1"] == (16, 16)
    assert w["classifier"] == (16, 8)
    tokens = out.model.features[0]
    assert tokens.embed.weight.shape == (256, 16 // patch) and tokens.pos.shape == (1, 32 // patch, 16)
    if patch > 1:
        assert w["features.0.proj"] == (16, 16)
    assert out.params < art.params and out.macs < art.macs
    assert head_table(model) == {"features.1.attn": 4, "features.2.attn": 4}  # input untouched

    path = export_onnx(out.model, text_splits.input_shape, tmp_path / "p.onnx")
    x = text_splits.val.x[:32]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        want = out.model.eval()(torch.from_numpy(x)).numpy()
    assert abs(got - want).max() < 1e-4
