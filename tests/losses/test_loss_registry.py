"""The loss registry: every kind is a frozen, strict config; duplicates raise; builders get a Probe."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from compress.losses import LOSSES, LossConfig, register_loss
from compress.losses.base import LayerError, Probe
from compress.models.zoo import cnn

EXPECTED = {"hinton", "kl", "mse", "ce", "hint", "attention", "rkd_distance", "rkd_angle"}


def test_every_method_is_registered():
    assert EXPECTED <= set(LOSSES)


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_configs_are_strict_and_frozen(kind):
    cls = LOSSES[kind].config
    assert cls.model_config["extra"] == "forbid" and cls.model_config["frozen"]
    with pytest.raises(ValidationError):
        cls.model_validate({"kind": kind, "no_such_key": 1})


def test_duplicate_kind_raises():
    from typing import Literal

    class Again(LossConfig):
        kind: Literal["hinton"]

    with pytest.raises(ValueError, match="registered twice"):
        register_loss(Again)(lambda cfg, probe: None)


def test_probe_lists_available_layers():
    probe = Probe(cnn((1, 8, 8), 10, width=8, depth=2), cnn((1, 8, 8), 10, width=4, depth=2), (1, 8, 8))
    assert probe.shape("student", "features.2", ("x",)) == (4, 8, 8)
    assert probe.shape("teacher", "pool", ("x",)) == (8 * 2 * 4,)
    with pytest.raises(LayerError, match="available layers: features, features.0") as info:
        probe.shape("teacher", "features.99", ("pairs", 0, "teacher"))
    assert info.value.key == "pairs[0].teacher"
