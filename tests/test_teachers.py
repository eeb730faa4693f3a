"""Ensemble and black-box teachers of a distill stage: the mean of logits, ONNX, precomputed files, checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compress._onnx import export_onnx
from compress.errors import RecipeError
from compress.models.zoo import cnn
from compress.pipeline import prepare
from compress.recipe import parse_recipe
from compress.teachers import TeacherSource, ensemble_logits

TEACHER = {"model": {"arch": "cnn", "width": 8, "depth": 2}}


def recipe(stage) -> dict:
    return {"name": "ens", "teacher": TEACHER, "student": {"model": {"arch": "cnn", "width": 4, "depth": 2}},
            "stages": [stage]}


def sources(*entries):
    return [TeacherSource.model_validate(e) for e in entries]


def test_weighted_mean_of_logits_by_hand(make_ctx, tmp_path):
    # recipe teacher (weight 1) and a logits file of constant rows [3, 0, ..., 0] (weight 3):
    #   mean = (1 * z + 3 * [3, 0, ...]) / 4  ->  first column: (z_0 + 9) / 4, the others z_k / 4
    ctx = make_ctx()
    n = len(ctx.splits.train)
    rows = np.zeros((n, 10), np.float32)
    rows[:, 0] = 3.0
    np.save(tmp_path / "t.npy", rows)
    got = ensemble_logits(sources({}, {"logits": str(tmp_path / "t.npy"), "weight": 3}), ctx)
    z = ctx.teacher_logits("train")
    expected = z / 4
    expected[:, 0] += 9 / 4
    assert torch.allclose(got, expected, atol=1e-6)


def test_probabilities_become_log_probabilities(make_ctx, tmp_path):
    # p = [0.5, 0.25, 0.25, 0, ...] -> log p; softmax(log p) = p again
    ctx = make_ctx()
    p = np.zeros((len(ctx.splits.train), 10), np.float32)
    p[:, :3] = [0.5, 0.25, 0.25]
    np.save(tmp_path / "p.npy", p)
    got = ensemble_logits(sources({"logits": str(tmp_path / "p.npy"), "probabilities": True}), ctx)
    assert torch.allclose(torch.softmax(got, 1)[:, :3], torch.tensor([0.5, 0.25, 0.25]).expand(len(p), 3), atol=1e-6)


def test_onnx_black_box_matches_the_torch_model(make_ctx, trained_cnn, tmp_path):
    ctx = make_ctx()
    export_onnx(trained_cnn, (1, 8, 8), tmp_path / "t.onnx")
    got = ensemble_logits(sources({"onnx": str(tmp_path / "t.onnx")}), ctx)
    assert torch.allclose(got, ctx.teacher_logits("train"), atol=1e-4)


def test_a_whole_data_logits_file_is_indexed_by_the_training_split(make_ctx, tmp_path):
    from compress.data import _read, stratified_split

    ctx = make_ctx()
    x, y = _read(ctx.recipe.data)
    rows = np.zeros((len(y), 10), np.float32)
    rows[np.arange(len(y)), y] = 5.0  # one-hot on the true label: after the split, row i marks train label i
    np.save(tmp_path / "all.npy", rows)
    got = ensemble_logits(sources({"logits": str(tmp_path / "all.npy")}), ctx)
    assert torch.equal(got.argmax(1), torch.from_numpy(ctx.splits.train.y))


def test_distill_with_an_ensemble_runs(make_ctx, trained_cnn, tmp_path, as_artifact):
    from compress.stages import STAGES

    export_onnx(trained_cnn, (1, 8, 8), tmp_path / "t.onnx")
    stage = {"type": "distill", "epochs": 1, "teachers": [{}, {"onnx": str(tmp_path / "t.onnx"), "weight": 2}]}
    ctx = make_ctx(recipe=recipe(stage))
    out = STAGES["distill"].fn(as_artifact(cnn((1, 8, 8), 10, width=4, depth=2)), ctx.recipe.stages[0], ctx)
    assert out.info["val_accuracy"] > 0


@pytest.mark.parametrize("entry, words", [
    ({"model": {"arch": "cnn"}}, "needs its 'weights'"),
    ({"onnx": "a.onnx", "logits": "b.npy"}, "one of recipe, model, onnx or logits"),
    ({"probabilities": True}, "'probabilities' describes a 'logits' file"),
])
def test_bad_teacher_entries(entry, words):
    with pytest.raises(RecipeError, match=words):
        parse_recipe(recipe({"type": "distill", "teachers": [entry]}))


def test_validate_checks_members_and_refuses_features_of_a_black_box(tmp_path):
    with pytest.raises(RecipeError, match="teacher ONNX file not found") as info:
        prepare(parse_recipe(recipe({"type": "distill", "teachers": [{"onnx": str(tmp_path / "none.onnx")}]})))
    assert info.value.key == "stages[0].teachers[0]"
    np.save(tmp_path / "bad.npy", np.zeros((5, 10), np.float32))
    with pytest.raises(RecipeError, match="5 rows, but the training split has"):
        prepare(parse_recipe(recipe({"type": "distill", "teachers": [{"logits": str(tmp_path / "bad.npy")}]})))
    good = tmp_path / "t.onnx"
    export_onnx(cnn((1, 8, 8), 10, width=4, depth=2).eval(), (1, 8, 8), good)
    loss = [{"kind": "hinton"}, {"kind": "hint", "pairs": [{"teacher": "features.2", "student": "features.2"}]}]
    with pytest.raises(RecipeError, match="reads teacher layers, but this stage's teachers") as info:
        prepare(parse_recipe(recipe({"type": "distill", "teachers": [{"onnx": str(good)}], "loss": loss})))
    assert info.value.key == "stages[0].loss[1]"
