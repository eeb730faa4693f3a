"""Students derived from the teacher: the recipe option and the weight initialisation."""

from __future__ import annotations

import pytest
import torch

from compress.errors import RecipeError
from compress.models.derive import init_from_teacher
from compress.models.zoo import cnn
from compress.recipe import parse_recipe


def recipe(student, teacher=None):
    return {"name": "d", "teacher": {"model": teacher or {"arch": "cnn", "width": 64, "depth": 3}},
            "student": student, "stages": [{"type": "distill", "epochs": 1}]}


def test_from_teacher_derives_width_and_depth():
    # width 64 * 0.25 = 16; depth 3 * 0.5 = 1.5 -> round half to even = 2
    r = parse_recipe(recipe({"from_teacher": {"width": 0.25, "depth": 0.5}}))
    assert (r.student.model.arch, r.student.model.width, r.student.model.depth) == ("cnn", 16, 2)
    # defaults: half the width, the same depth
    r = parse_recipe(recipe({"from_teacher": {}}))
    assert (r.student.model.width, r.student.model.depth) == (32, 3)


@pytest.mark.parametrize("student, teacher, words", [
    ({"from_teacher": {"width": 0}}, None, "student.from_teacher.width: Input should be greater than 0"),
    ({"from_teacher": {"widht": 0.5}}, None, "unknown key 'widht'; did you mean 'width'?"),
    ({"from_teacher": {}, "model": {"arch": "cnn"}}, None, "either 'model' or 'from_teacher'"),
    ({"from_teacher": {}}, {"factory": "pkg.mod:make"}, "needs a built-in teacher"),
    ({}, None, "give the student a 'model' or 'from_teacher"),
])
def test_bad_from_teacher(student, teacher, words):
    with pytest.raises(RecipeError, match=words.replace("(", r"\(").replace("?", r"\?")):
        parse_recipe(recipe(student, teacher))


def test_init_copies_leading_slices_where_shapes_allow():
    torch.manual_seed(0)
    teacher, student = cnn((1, 8, 8), 10, width=8, depth=3), cnn((1, 8, 8), 10, width=4, depth=2)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    done = init_from_teacher(student, teacher)
    # conv 0: student (4, 1, 3, 3) = teacher (8, 1, 3, 3)[:4]; conv 3: (8, 4, 3, 3) = teacher (16, 8, 3, 3)[:8, :4]
    assert torch.equal(student.features[0].weight, teacher.features[0].weight[:4])
    assert torch.equal(student.features[3].weight, teacher.features[3].weight[:8, :4])
    assert torch.equal(student.features[1].running_var, teacher.features[1].running_var[:4])
    # every tensor fits, the classifier too: student (10, 8 * 2 * 2 = 32) inside the teacher's (10, 32 * 2 * 2 = 128)
    assert done["kept"] == [] and done["copied"] == list(before)
    # a student wider than the teacher keeps its own weights
    wide = cnn((1, 8, 8), 10, width=16, depth=2)
    w0 = wide.features[0].weight.clone()
    assert "features.0.weight" in init_from_teacher(wide, teacher)["kept"]
    assert torch.equal(wide.features[0].weight, w0)


def test_first_distill_stage_starts_from_the_teacher(make_ctx, as_artifact):
    from compress.stages import STAGES

    r = recipe({"from_teacher": {"width": 0.5, "depth": 0.67}}, {"arch": "cnn", "width": 8, "depth": 3})
    torch.manual_seed(0)
    teacher = cnn((1, 8, 8), 10, width=8, depth=3).eval()
    ctx = make_ctx(teacher=teacher, recipe=r)
    cfg = ctx.recipe.stages[0]
    out = STAGES["distill"].fn(as_artifact(cnn((1, 8, 8), 10, width=4, depth=2)), cfg, ctx)
    assert out.info["init_from_teacher"]["copied"] > 0
    off = STAGES["distill"].fn(as_artifact(cnn((1, 8, 8), 10, width=4, depth=2)),
                               cfg.model_copy(update={"init_from_teacher": False}), ctx)
    assert "init_from_teacher" not in off.info
