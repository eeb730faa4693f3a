"""``augment`` on distill / finetune: shifts and noise on the training batches, the teacher run on exactly what the
student sees, and the scratch baseline trained with the same augmentation."""

from __future__ import annotations

import pytest
import torch

from compress.artifact import Artifact
from compress.errors import RecipeError, StageError
from compress.models.zoo import cnn
from compress.pipeline import scratch_budget
from compress.recipe import parse_recipe
from compress.stages import STAGES
from compress.stages.distill import AugmentConfig, augmenter

TEACHER = {"model": {"arch": "cnn", "width": 8, "depth": 3}}
STUDENT = {"model": {"arch": "cnn", "width": 4, "depth": 2}}


def recipe(*stages) -> dict:
    return {"name": "augment", "teacher": TEACHER, "student": STUDENT, "stages": list(stages)}


def test_shift_moves_each_sample_along_each_axis_with_zero_fill():
    aug = augmenter(AugmentConfig(shift=2), (1, 6))
    x = torch.arange(1.0, 7.0).repeat(200, 1, 1)  # 200 copies of [1..6]
    out = aug(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    seen = set()
    for row in out[:, 0]:
        k = next(k for k in range(-2, 3) if torch.equal(row, _shifted(torch.arange(1.0, 7.0), k)))
        seen.add(k)
    assert seen == {-2, -1, 0, 1, 2}  # every shift in [-2, 2] occurs; nothing else does
    img = augmenter(AugmentConfig(shift=1), (1, 3, 3))(torch.ones(50, 1, 3, 3), torch.Generator().manual_seed(0))
    assert {int(i.sum()) for i in img} <= {4, 6, 9} and len({int(i.sum()) for i in img}) == 3  # rows and columns


def _shifted(v, k):
    out = torch.zeros_like(v)
    if k >= 0:
        out[k:] = v[:len(v) - k]
    else:
        out[:k] = v[-k:]
    return out


def test_noise_and_seeding():
    aug = augmenter(AugmentConfig(noise=0.5), (4,))
    x = torch.zeros(1000, 4)
    a, b = aug(x, torch.Generator().manual_seed(3)), aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and abs(float(a.std()) - 0.5) < 0.03
    assert augmenter(None, (1, 8, 8)) is None and augmenter(AugmentConfig(), (1, 8, 8)) is None


def test_shift_needs_a_spatial_axis():
    with pytest.raises(StageError, match=r"augment.shift moves signals .* this data's input is \(64,\)"):
        augmenter(AugmentConfig(shift=1), (64,))


@pytest.mark.parametrize("stage, words", [
    ({"type": "distill", "augment": {"shift": 1}, "loss": [{"kind": "hinton"}]}, "a 'loss' list reads teacher outputs"),
    ({"type": "distill", "augment": {"noise": 0.1}, "teachers": [{}, {"model": {"arch": "cnn"}, "weights": "w.pt"}]},
     "an ensemble or black box"),
    ({"type": "distill", "augment": {"shfit": 1}}, "shfit"),
    ({"type": "distill", "augment": {"shift": -1}}, "shift"),
])
def test_bad_augment_fails_at_parse(stage, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pt").write_bytes(b"")
    with pytest.raises(RecipeError, match=words):
        parse_recipe(recipe(stage))


def test_teacher_runs_on_the_augmented_batches(make_ctx):
    """Each KD batch's soft targets come from the teacher on the batch the student was trained on, not the cache."""
    r = recipe({"type": "distill", "epochs": 1, "augment": {"shift": 1, "noise": 0.05}})
    cfg = parse_recipe(r).stages[0]
    torch.manual_seed(0)
    teacher = cnn((1, 8, 8), 10, width=8, depth=3).eval()
    seen_by_teacher, seen_by_student = [], []
    teacher.register_forward_pre_hook(lambda m, a: seen_by_teacher.append(a[0].clone()))
    ctx = make_ctx(teacher=teacher, recipe=r)
    ctx.teacher_logits = lambda *a, **k: pytest.fail("augmented KD must not read cached teacher logits")
    torch.manual_seed(1)
    student = cnn((1, 8, 8), 10, width=4, depth=2)
    import compress.training as training

    real_fit = training.fit

    def spy_fit(model, splits, **kw):
        def attach(copy):
            h = copy.register_forward_pre_hook(lambda m, a: seen_by_student.append(a[0].clone()) if m.training else None)
            return h.remove
        return real_fit(model, splits, attach=attach, **kw)

    training.fit, saved = spy_fit, training.fit
    try:
        out = STAGES["distill"].fn(Artifact("student", "torch", student), cfg, ctx)
    finally:
        training.fit = saved
    train_batches = [x for x in seen_by_student]
    assert len(train_batches) == len(seen_by_teacher) == 17  # 1079 training samples in batches of 64
    assert all(torch.equal(a, b) for a, b in zip(train_batches, seen_by_teacher))
    x0 = torch.from_numpy(ctx.splits.train.x[:1])
    assert not any(torch.equal(b[:1], x0) for b in train_batches)  # augmented, not the raw rows
    assert 0 < out.info["val_accuracy"] <= 1


def test_scratch_gets_the_same_augmentation():
    r = parse_recipe(recipe({"type": "distill", "epochs": 3, "lr": 0.01, "augment": {"shift": 2, "noise": 0.1}},
                            {"type": "finetune", "epochs": 1, "distill": True}))
    assert scratch_budget(r) == {"epochs": 4, "lr": 0.01, "batch_size": 64, "weight_decay": 0.0,
                                  "augment": {"shift": 2, "noise": 0.1}}
    plain = parse_recipe(recipe({"type": "distill", "epochs": 3}))
    assert "augment" not in scratch_budget(plain)  # recipes without it keep their cache keys


def test_scratch_is_trained_with_the_augmentation(monkeypatch, tmp_path, splits):
    import compress.pipeline as pipeline
    from compress.cache import Cache

    got = {}
    real = pipeline.fit

    def spy(*a, **kw):
        got["augment"] = kw.get("augment")
        return real(*a, **kw)

    monkeypatch.setattr(pipeline, "fit", spy)
    pipeline.train_cached(Cache(tmp_path / "c"), "0123456789abcdef0123", cnn((1, 8, 8), 10, 4, 2), splits, epochs=1, lr=3e-3,
                          batch_size=64, weight_decay=0.0, seed=0, desc="s", quiet=True, augment={"shift": 1, "noise": 0})
    assert callable(got["augment"])
    out = got["augment"](torch.ones(8, 1, 8, 8), torch.Generator().manual_seed(0))
    assert out.shape == (8, 1, 8, 8) and float(out.sum()) < 8 * 64  # some rows or columns moved out


def test_finetune_takes_augment_without_distill(make_ctx):
    r = recipe({"type": "finetune", "epochs": 1, "augment": {"noise": 0.05}})
    cfg = parse_recipe(r).stages[0]
    torch.manual_seed(0)
    out = STAGES["finetune"].fn(Artifact("student", "torch", cnn((1, 8, 8), 10, 4, 2)), cfg, make_ctx(recipe=r))
    assert out.info["distill"] is False and 0 < out.info["val_accuracy"] <= 1
