"""The ``loss: [...]`` option of distill and finetune: recipe errors, validation of layers, one tiny run per family."""

from __future__ import annotations

import copy

import pytest
import torch

from compress.artifact import Artifact
from compress.errors import RecipeError
from compress.models.zoo import cnn
from compress.pipeline import prepare
from compress.recipe import parse_recipe
from compress.stages import STAGES

TEACHER = {"model": {"arch": "cnn", "width": 8, "depth": 3}}  # 8x8 maps at features.2 and .5, 4x4 at .9
STUDENT = {"model": {"arch": "cnn", "width": 4, "depth": 2}}  # 8x8 maps at features.2 and .5


def recipe(*stages) -> dict:
    return {"name": "losses", "teacher": TEACHER, "student": STUDENT, "stages": list(stages)}


def distill(loss, epochs=1):
    return {"type": "distill", "epochs": epochs, "loss": loss}


def test_no_loss_key_keeps_the_default():
    r = parse_recipe(recipe({"type": "distill"}, {"type": "finetune", "distill": True}))
    assert r.stages[0].loss is None and r.stages[1].loss is None


@pytest.mark.parametrize("loss, expected", [
    ([{"kind": "atention"}], "stages[0].loss[0].kind: unknown loss kind 'atention'; did you mean 'attention'? valid choices: attention, ce,"),
    ([{"kind": "hint", "pair": []}], "stages[0].loss[0].pair: unknown key 'pair'; did you mean 'pairs'?"),
    ([{"kind": "hint", "pairs": [{"teacher": "a", "studnt": "b"}]}], "stages[0].loss[0].pairs[0].studnt: unknown key 'studnt'; did you mean 'student'?"),
    ([{"kind": "hinton", "weight": -1}], "stages[0].loss[0].weight:"),
])
def test_bad_loss_entries_fail_at_parse(loss, expected):
    with pytest.raises(RecipeError) as info:
        parse_recipe(recipe(distill(loss)))
    assert expected in str(info.value)


def test_finetune_loss_needs_distill():
    with pytest.raises(RecipeError, match="'loss' is used only with 'distill: true'; set distill: true or drop it"):
        parse_recipe(recipe({"type": "finetune", "loss": [{"kind": "hinton"}]}))


@pytest.mark.parametrize("loss, key, words", [
    ([{"kind": "hinton"}, {"kind": "hint", "pairs": [{"teacher": "features.2", "student": "features.2"},
                                                     {"teacher": "feature.5", "student": "features.5"}]}],
     "stages[0].loss[1].pairs[1].teacher", "the teacher has no layer 'feature.5'; available layers: features, features.0"),
    ([{"kind": "attention", "pairs": [{"teacher": "features.2", "student": "classifier"}]}],
     "stages[0].loss[0].pairs[0]", "attention maps need C x H x W"),
    ([{"kind": "hint", "pairs": [{"teacher": "features.9", "student": "features.5"}]}],
     "stages[0].loss[0].pairs[0]", "differ in H x W"),
    ([{"kind": "rkd_angle", "student": "head"}], "stages[0].loss[0].student", "the student has no layer 'head'"),
])
def test_bad_layers_fail_before_any_training(loss, key, words):
    with pytest.raises(RecipeError) as info:
        prepare(parse_recipe(recipe(distill(loss))))
    assert info.value.key == key
    assert words in info.value.message


def run_stage(make_ctx, cfg_dict, teacher=None):
    r = recipe(cfg_dict)
    cfg = parse_recipe(r).stages[0]
    torch.manual_seed(0)
    ctx = make_ctx(teacher=teacher or cnn((1, 8, 8), 10, width=8, depth=3).eval(), recipe=r)
    torch.manual_seed(1)
    student = cnn((1, 8, 8), 10, width=4, depth=2)
    return STAGES[cfg.type].fn(Artifact("student", "torch", student), cfg, ctx), student


def test_hinton_entry_equals_the_default_bit_for_bit(make_ctx):
    default, _ = run_stage(make_ctx, {"type": "distill", "epochs": 2, "temperature": 3, "alpha": 0.3})
    listed, _ = run_stage(make_ctx, {"type": "distill", "epochs": 2, "temperature": 3, "alpha": 0.3,
                                     "loss": [{"kind": "hinton"}]})
    for k, v in default.model.state_dict().items():
        assert torch.equal(v, listed.model.state_dict()[k]), k


FAMILIES = {
    "response": [{"kind": "kl", "weight": 0.5}, {"kind": "mse", "weight": 0.1}, {"kind": "ce"}],
    "hint": [{"kind": "hinton"}, {"kind": "hint", "weight": 0.5,
                                  "pairs": [{"teacher": "features.5", "student": "features.5"}]}],
    "attention": [{"kind": "ce"}, {"kind": "attention", "pairs": [{"teacher": "features.2", "student": "features.2"},
                                                                  {"teacher": "features.5", "student": "features.5"}]}],
    "relation": [{"kind": "hinton"}, {"kind": "rkd_distance", "teacher": "pool", "student": "pool"},
                 {"kind": "rkd_angle"}],
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("stage", ["distill", "finetune"])
def test_each_family_trains_and_leaves_no_trace_in_the_model(make_ctx, family, stage):
    cfg = {"type": stage, "epochs": 1, "loss": FAMILIES[family], **({"distill": True} if stage == "finetune" else {})}
    out, student = run_stage(make_ctx, cfg)
    assert out.info["val_accuracy"] > 0
    # projectors are not part of the model; no hooks left behind
    assert out.model.state_dict().keys() == student.state_dict().keys()
    assert not any(m._forward_hooks for m in out.model.modules())
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in out.model.state_dict().items())


def test_teacher_features_are_computed_once(make_ctx):
    ctx = make_ctx(teacher=cnn((1, 8, 8), 10, width=8, depth=3).eval())
    a = ctx.teacher_features(["features.5"])["features.5"]
    b = ctx.teacher_features(["features.5", "features.2"])
    assert a is b["features.5"] and a.shape == (len(ctx.splits.train), 16, 8, 8)
    assert b["features.2"].shape == (len(ctx.splits.train), 8, 8, 8)


def test_cli_validate_names_the_layers(tmp_path):
    import yaml
    from click.testing import CliRunner

    from compress.cli import cli

    r = copy.deepcopy(recipe(distill([{"kind": "hint", "pairs": [{"teacher": "features.5", "student": "features.7"}]}])))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(r, sort_keys=False))
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "stages[0].loss[0].pairs[0].student: the student has no layer 'features.7'" in result.output
    assert "features.5" in result.output


def test_whole_pipeline_with_feature_losses_before_and_after_pruning(tmp_path, tiny_recipe):
    """Hints in distill, attention + RKD in finetune after pruning (projectors rebuilt for the pruned widths)."""
    from compress.pipeline import run

    r = copy.deepcopy(tiny_recipe)
    r["teacher"] = {"model": {"arch": "cnn", "width": 8, "depth": 3}, "train": {"epochs": 1, "lr": 0.003}}
    r["stages"] = [
        {"type": "distill", "epochs": 1, "loss": FAMILIES["hint"]},
        {"type": "prune", "ratio": 0.5},
        {"type": "finetune", "epochs": 1, "distill": True,
         "loss": [*FAMILIES["attention"], {"kind": "rkd_distance", "teacher": "pool", "student": "pool"}]},
        {"type": "export"},
    ]
    report = run(parse_recipe(r), output=tmp_path, quiet=True)
    final = next(m for m in report["models"] if m["role"] == "final")
    assert 0 < final["accuracy"] <= 1
    assert report["recipe"]["stages"][0]["loss"][1]["pairs"][0]["teacher"] == "features.5"


def test_born_again_generations_are_each_reported_and_taught_by_the_previous(make_ctx, monkeypatch):
    import compress.stages.distill as d

    teachers = []
    real = d.loss_fit_kwargs

    def spy(ctx, model, cfg):
        teachers.append(ctx.teacher)
        return real(ctx, model, cfg)

    monkeypatch.setattr(d, "loss_fit_kwargs", spy)
    out, _ = run_stage(make_ctx, {"type": "distill", "epochs": 1, "generations": 3,
                                  "loss": [{"kind": "hinton"}, {"kind": "attention", "pairs": AT_PAIR}]})
    gens = out.info["generations"]
    assert [g["generation"] for g in gens] == [1, 2, 3]
    assert all(0 < g["val_accuracy"] <= 1 for g in gens)
    assert out.info["val_accuracy"] == gens[-1]["val_accuracy"]
    # generation 1 learns from the recipe's teacher (width 8), 2 and 3 from a student (width 4) of the one before
    assert teachers[0].features[0].out_channels == 8
    assert teachers[1].features[0].out_channels == 4 and teachers[2] is not teachers[1]


AT_PAIR = [{"teacher": "features.2", "student": "features.2"}]


def test_mutual_learning_trains_peers_and_keeps_peer_zero(make_ctx):
    out, student = run_stage(make_ctx, {"type": "distill", "epochs": 1, "peers": 2})
    assert out.info["peers"] == 2 and len(out.info["peer_val_accuracy"]) == 2
    assert out.model.state_dict().keys() == student.state_dict().keys()  # a plain student, not the wrapper
    assert not any(m._forward_hooks for m in out.model.modules())


def test_mutual_learning_excludes_loss_and_generations():
    with pytest.raises(RecipeError, match="'peers'"):
        parse_recipe(recipe({"type": "distill", "peers": 2, "loss": [{"kind": "hinton"}]}))


def test_teacher_outputs_are_cached_on_disk_by_teacher_and_data(make_ctx, tmp_path, monkeypatch):
    import dataclasses

    import compress.context as context_mod

    from compress.cache import Cache

    teacher = cnn((1, 8, 8), 10, width=8, depth=3).eval()
    cache = Cache(tmp_path / "cache")
    first = dataclasses.replace(make_ctx(teacher=teacher), teacher_key="t1", cache=cache)
    logits = first.teacher_logits("train")
    feats = first.teacher_features(["features.5"])["features.5"]
    assert len(list((tmp_path / "cache" / "teacher-outputs").iterdir())) == 2

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(context_mod, "predict_logits", boom)
    second = dataclasses.replace(make_ctx(teacher=teacher), teacher_key="t1", cache=cache)
    assert torch.equal(second.teacher_logits("train"), logits)
    assert torch.equal(second.teacher_features(["features.5"])["features.5"], feats)
    other = dataclasses.replace(make_ctx(teacher=teacher), teacher_key="t2", cache=cache)
    with pytest.raises(AssertionError, match="recomputed"):  # another teacher: not reused
        other.teacher_logits("train")


def test_teacher_assistant_chain(make_ctx, monkeypatch):
    import compress.stages.distill as d

    seen = []
    real = d.kd_loss_fn

    def spy(ctx, temperature, alpha):
        seen.append(ctx.teacher.features[0].out_channels)
        return real(ctx, temperature, alpha)

    monkeypatch.setattr(d, "kd_loss_fn", spy)
    out, _ = run_stage(make_ctx, {"type": "distill", "epochs": 1,
                                  "chain": [{"arch": "cnn", "width": 6, "depth": 3}, {"arch": "cnn", "width": 5}]})
    # teacher (8) -> chain step 1 (6) -> chain step 2 (5) -> student (4)
    assert seen == [8, 6, 5]
    assert [a["model"] for a in out.info["chain"]] == ["cnn(width=6, depth=3)", "cnn(width=5, depth=2)"]


def test_assistants_is_another_name_for_chain():
    chain = [{"arch": "cnn", "width": 6, "depth": 3}]
    a = parse_recipe(recipe({"type": "distill", "assistants": chain})).stages[0]
    b = parse_recipe(recipe({"type": "distill", "chain": chain})).stages[0]
    assert a == b and a.chain[0].width == 6


def test_chain_takes_a_user_factory_and_checks_it_before_training(tmp_path, monkeypatch, make_ctx):
    (tmp_path / "chain_factory.py").write_text(
        "import torch.nn as nn\n"
        "def make(hidden=8):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))\n"
        "def wrong():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    step = {"factory": "chain_factory:make", "kwargs": {"hidden": 12}}
    prepare(parse_recipe(recipe({"type": "distill", "chain": [step]})))
    out, _ = run_stage(make_ctx, {"type": "distill", "epochs": 1, "chain": [step]})
    assert out.info["chain"][0]["model"] == "chain_factory:make(hidden=12)"
    with pytest.raises(RecipeError) as info:
        prepare(parse_recipe(recipe({"type": "distill", "chain": [step, {"factory": "chain_factory:wrong"}]})))
    assert info.value.key == "stages[0].chain[1]"
    assert "chain step chain_factory:wrong() outputs (2, 3)" in info.value.message and "10" in info.value.message


def test_chain_step_needs_one_architecture():
    with pytest.raises(RecipeError, match=r"stages\[0\]\.chain\[0\]: a chain step needs exactly one of 'arch'"):
        parse_recipe(recipe({"type": "distill", "chain": [{"width": 6}]}))
    with pytest.raises(RecipeError, match=r"stages\[0\]\.chain\[0\]\.arch: invalid value 'resnet'; valid choices: mlp, cnn, transformer, text_transformer"):
        parse_recipe(recipe({"type": "distill", "chain": [{"arch": "resnet"}]}))


# --- finetune offers every scheme distill does -------------------------------------------------------


def test_finetune_with_distill_trains_exactly_as_distill_does(make_ctx):
    a, _ = run_stage(make_ctx, {"type": "distill", "epochs": 2, "lr": 1e-3, "temperature": 3, "alpha": 0.3})
    b, _ = run_stage(make_ctx, {"type": "finetune", "epochs": 2, "lr": 1e-3, "temperature": 3, "alpha": 0.3,
                                "distill": True})
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    assert b.name == "finetune" and b.info["distill"] is True


def test_finetune_chain_generations_and_peers(make_ctx, monkeypatch):
    import compress.stages.distill as d

    seen = []
    real = d.kd_loss_fn
    monkeypatch.setattr(d, "kd_loss_fn", lambda ctx, t, a: seen.append(ctx.teacher.features[0].out_channels) or real(ctx, t, a))
    out, _ = run_stage(make_ctx, {"type": "finetune", "distill": True, "epochs": 1, "chain": [{"arch": "cnn", "width": 6}]})
    assert seen == [8, 6] and out.info["chain"][0]["model"] == "cnn(width=6, depth=2)"
    out, _ = run_stage(make_ctx, {"type": "finetune", "distill": True, "epochs": 1, "generations": 2})
    assert [g["generation"] for g in out.info["generations"]] == [1, 2]
    out, student = run_stage(make_ctx, {"type": "finetune", "distill": True, "epochs": 1, "peers": 2})
    assert out.info["peers"] == 2 and out.model.state_dict().keys() == student.state_dict().keys()


def test_finetune_with_an_ensemble_of_teachers(make_ctx, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(5)
    other = cnn((1, 8, 8), 10, width=6, depth=2)
    save_file(other.state_dict(), tmp_path / "t2.safetensors")
    teachers = [{"recipe": True}, {"model": {"arch": "cnn", "width": 6}, "weights": str(tmp_path / "t2.safetensors"),
                                   "weight": 2.0}]
    out, _ = run_stage(make_ctx, {"type": "finetune", "distill": True, "epochs": 1, "teachers": teachers})
    plain, _ = run_stage(make_ctx, {"type": "finetune", "distill": True, "epochs": 1})
    assert any(not torch.equal(v, plain.model.state_dict()[k]) for k, v in out.model.state_dict().items())


@pytest.mark.parametrize("keys, words", [
    ({"generations": 2}, "'generations' is used only with 'distill: true'; set distill: true or drop it"),
    ({"loss": [{"kind": "ce"}], "chain": [{"arch": "cnn"}]},
     "'loss', 'chain' are used only with 'distill: true'; set distill: true or drop them"),
])
def test_finetune_kd_keys_need_distill(keys, words):
    with pytest.raises(RecipeError) as info:
        parse_recipe(recipe({"type": "finetune", **keys}))
    assert words in str(info.value)


def test_scratch_budget_counts_every_student_sized_model_trained():
    from compress.pipeline import scratch_budget

    r = parse_recipe(recipe({"type": "distill", "epochs": 5, "generations": 3}, {"type": "prune", "ratio": 0.3},
                            {"type": "finetune", "epochs": 2, "distill": True, "peers": 2},
                            {"type": "finetune", "epochs": 1, "chain": [{"arch": "cnn"}], "distill": True}))
    assert scratch_budget(r)["epochs"] == 5 * 3 + 2 * 2 + 1


def test_loss_layers_are_checked_against_every_teacher_of_the_student():
    # born-again: generation 2's teacher is a student, which has no features.9
    loss = [{"kind": "rkd_distance", "teacher": "features.9", "student": "pool"}]  # fine for the recipe's teacher
    prepare(parse_recipe(recipe({"type": "distill", "loss": loss})))
    with pytest.raises(RecipeError, match="the teacher has no layer 'features.9'"):
        prepare(parse_recipe(recipe({"type": "distill", "generations": 2, "loss": loss})))
    # assistant chain: the student's teacher is the (2-block) assistant
    with pytest.raises(RecipeError, match="the teacher has no layer 'features.9'"):
        prepare(parse_recipe(recipe({"type": "distill", "chain": [{"arch": "cnn", "width": 6}], "loss": loss})))


def test_chain_step_takes_transformer_keys_and_refuses_them_elsewhere():
    from compress.stages.distill import ChainModel

    step = ChainModel(arch="text_transformer", width=16, depth=1, heads=2, patch=4)
    assert step.describe() == "text_transformer(width=16, depth=1, heads=2, patch=4)"
    with pytest.raises(ValueError, match="'patch' is a key of arch 'transformer' and 'text_transformer' only"):
        ChainModel(arch="cnn", width=8, patch=2)
