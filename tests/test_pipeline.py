"""End to end: a tiny recipe through every stage, the report, the cache, and the output-folder checks.

One run takes a few seconds on 2 cores (teacher 3 epochs, distill 2, finetune 1, tiny models).
"""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from compress.data import load_data
from compress.errors import CompressError
from compress.models.zoo import cnn
from compress.pipeline import run
from compress.recipe import DataConfig, parse_recipe
from compress.stages import STAGES

STAGE_NAMES = ["01_distill", "02_prune", "03_finetune", "04_export", "05_quantize"]


def ort_predict(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x)})[0]


class DistillSpy:
    """Wraps the distill stage to record the weights of the student that enters the chain."""

    def __init__(self):
        self.seen: list[dict] = []
        self.spec = STAGES["distill"]

    def install(self, mp):
        def fn(art, cfg, ctx):
            self.seen.append({k: v.detach().clone() for k, v in art.model.state_dict().items()})
            return self.spec.fn(art, cfg, ctx)

        mp.setitem(STAGES, "distill", dataclasses.replace(self.spec, fn=fn))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("pipeline")


@pytest.fixture(scope="module")
def first(root, tiny_recipe_module):
    """The first run into a fresh output root: nothing cached."""
    spy = DistillSpy()
    with pytest.MonkeyPatch.context() as mp:
        spy.install(mp)
        report = run(parse_recipe(tiny_recipe_module), output=root, quiet=True)
    return report, root / "tiny", spy


@pytest.fixture(scope="module")
def tiny_recipe_module(tiny_recipe_template):
    return copy.deepcopy(tiny_recipe_template)


def models_by_name(report):
    return {m["name"]: m for m in report["models"]}


def test_files_are_written(first):
    report, out, _ = first
    for name in ("report.json", "report.md", "report.png", "model.onnx", "model.ort"):
        assert (out / name).is_file(), name
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report, default=str))
    assert report["files"]["model"] == str(out / "model.onnx")
    for name in ("teacher.onnx", "scratch.onnx", "stages/01_distill.onnx", "stages/02_prune.onnx",
                 "stages/03_finetune.onnx", "stages/04_export.onnx", "stages/04_export.ort",
                 "stages/05_quantize_int8_static.onnx", "stages/05_quantize_int8_static.ort"):
        assert (out / name).is_file(), name
    # the shipped model is the last stage's file
    assert (out / "model.onnx").read_bytes() == (out / "stages" / "05_quantize_int8_static.onnx").read_bytes()
    assert (out / "model.ort").read_bytes() == (out / "stages" / "05_quantize_int8_static.ort").read_bytes()


def test_models_and_roles(first):
    report, out, _ = first
    assert [(m["name"], m["role"]) for m in report["models"]] == (
        [("teacher", "teacher"), ("scratch", "scratch")] + [(n, "stage") for n in STAGE_NAMES] + [("final", "final")])
    for m in report["models"]:
        for key in ("name", "role", "path", "accuracy", "size_bytes", "params", "latency_ms"):
            assert m.get(key) is not None, (m["name"], key)
        assert 0.0 <= m["accuracy"] <= 1.0
        assert m["errors"] == round((1 - m["accuracy"]) * report["data"]["test"])
        assert m["size_bytes"] > 0 and m["params"] > 0
        for timing in (m["latency_ms"], m["latency_batch_ms"]):
            assert 0 < timing["p50"] <= timing["p90"] <= timing["p99"]
            assert timing["calls"] > 0
    assert [s["type"] for s in report["stages"]] == ["distill", "prune", "finetune", "export", "quantize"]
    by = models_by_name(report)
    assert by["final"]["path"] == str(out / "model.onnx")
    assert by["final"]["info"]["source"] == "05_quantize"
    assert by["05_quantize"]["lineage"] == ["student", "distill", "prune", "finetune", "export"]
    assert by["teacher"]["agreement"] == 1.0


def test_numbers_are_consistent(first):
    report, out, _ = first
    by = models_by_name(report)
    # teacher cnn(8, 2): 1922 params; student cnn(4, 2): 4*9 + 8 + 8*4*9 + 16 + (32*10 + 10) = 678
    assert by["teacher"]["params"] == 1922
    assert by["scratch"]["params"] == by["01_distill"]["params"] == 678
    assert by["02_prune"]["params"] < by["01_distill"]["params"]
    assert by["02_prune"]["macs"] < by["01_distill"]["macs"]
    assert by["05_quantize"]["params"] == by["04_export"]["params"] == by["02_prune"]["params"]
    assert by["final"]["size_bytes"] == by["05_quantize"]["size_bytes"] == (out / "model.onnx").stat().st_size
    assert report["data"]["train"] + report["data"]["val"] + report["data"]["test"] == 1797
    assert sum(report["data"]["test_class_counts"]) == report["data"]["test"]
    assert by["teacher"]["info"]["cached"] is False
    assert by["scratch"]["info"]["budget"]["epochs"] == 3  # distill 2 + finetune 1
    summary = report["summary"]["final_vs_teacher"]
    assert summary["size_ratio"] == pytest.approx(by["teacher"]["size_bytes"] / by["final"]["size_bytes"])
    assert summary["accuracy_ratio"] == pytest.approx(by["final"]["accuracy"] / by["teacher"]["accuracy"])
    assert report["summary"]["final_vs_scratch"]["errors"] == by["final"]["errors"]


def test_final_accuracy_matches_an_independent_evaluation(first):
    report, out, _ = first
    splits = load_data(DataConfig(), report["recipe"]["seed"])
    assert len(splits.test) == report["data"]["test"]
    assert splits.fingerprint == report["data"]["fingerprint"]
    pred = ort_predict(out / "model.onnx", splits.test.x).argmax(1)
    assert models_by_name(report)["final"]["accuracy"] == pytest.approx(float((pred == splits.test.y).mean()), abs=1e-12)
    teacher_pred = ort_predict(out / "teacher.onnx", splits.test.x).argmax(1)
    assert models_by_name(report)["teacher"]["accuracy"] == pytest.approx(float((teacher_pred == splits.test.y).mean()))
    # the .ort file ships the same model
    assert (ort_predict(out / "model.ort", splits.test.x).argmax(1) == pred).mean() >= 0.98


def test_report_markdown(first):
    report, out, _ = first
    md = (out / "report.md").read_text()
    assert md.startswith("# compress report: tiny")
    for name in ["teacher", "scratch", *STAGE_NAMES, "final"]:
        assert f"| {name} |" in md
    assert "### 2. prune" in md and "| layer | channels before | after | removed | asked |" in md
    assert "![accuracy vs latency](report.png)" in md


def test_chain_starts_from_the_fresh_student(first, tiny_recipe_module):
    _, _, spy = first
    assert len(spy.seen) == 1
    torch.manual_seed(tiny_recipe_module["seed"] + 1)  # prepare() seeds the student with seed + 1
    fresh = cnn((1, 8, 8), 10, width=4, depth=2).state_dict()
    assert all(torch.equal(spy.seen[0][k], fresh[k]) for k in fresh)


def test_second_run_without_baseline_reuses_the_cached_teacher(first, root, tiny_recipe_module):
    d = copy.deepcopy(tiny_recipe_module)
    d["name"], d["baseline"] = "tiny-nobaseline", "none"
    report = run(parse_recipe(d), output=root, quiet=True)
    by = models_by_name(report)
    assert "scratch" not in by and "scratch" not in [m["role"] for m in report["models"]]
    assert "final_vs_scratch" not in report["summary"]
    assert by["teacher"]["info"]["cached"] is True
    # the cached teacher is the same model: same predictions on the test split
    first_teacher = models_by_name(first[0])["teacher"]
    assert by["teacher"]["accuracy"] == first_teacher["accuracy"]
    assert not (root / "tiny-nobaseline" / "scratch.onnx").exists()


def test_cached_scratch_baseline_does_not_leak_into_the_chain(first, root, tiny_recipe_module):
    """Regression: a scratch-cache hit must not load the scratch weights into the student that enters the chain."""
    d = copy.deepcopy(tiny_recipe_module)
    d["name"] = "tiny-again"  # same teacher, student and budget: both cache entries of the first run hit
    d["stages"][0]["temperature"] = 3.0  # ... but the distill stage itself is new, so it runs (and is spied on)
    spy = DistillSpy()
    with pytest.MonkeyPatch.context() as mp:
        spy.install(mp)
        report = run(parse_recipe(d), output=root, quiet=True)
    assert models_by_name(report)["scratch"]["info"]["cached"] is True
    assert all(torch.equal(spy.seen[0][k], v) for k, v in first[2].seen[0].items())


def test_output_path_that_is_a_file(tmp_path, tiny_recipe):
    target = tmp_path / "not-a-folder"
    target.write_text("x")
    with pytest.raises(CompressError, match="is a file, not a folder") as err:
        run(parse_recipe(tiny_recipe), output=target, quiet=True)
    assert str(target) in str(err.value)
    assert target.read_text() == "x"


def test_a_rerun_replaces_the_stage_files(tmp_path, tiny_recipe):
    out = tmp_path / "tiny" / "stages"
    out.mkdir(parents=True)
    (out / "99_stale.onnx").write_text("old")
    d = copy.deepcopy(tiny_recipe)
    d["stages"] = [{"type": "export"}]
    d["baseline"] = "none"
    report = run(parse_recipe(d), output=tmp_path, quiet=True)
    assert not (out / "99_stale.onnx").exists()
    assert [m["name"] for m in report["models"]] == ["teacher", "01_export", "final"]
    assert not (tmp_path / "tiny" / "model.ort").exists()


def test_validate_refuses_bn_scale_for_a_student_without_batchnorm(tmp_path, monkeypatch, tiny_recipe):
    from compress.errors import RecipeError
    from compress.pipeline import validate

    (tmp_path / "nobn_factory.py").write_text(
        "from torch import nn\n\n"
        "def make(hidden=16):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    tiny_recipe["student"] = {"model": {"factory": "nobn_factory:make", "kwargs": {"hidden": 12}}}
    tiny_recipe["stages"][1] = {"type": "prune", "ratio": 0.3, "importance": "bn_scale"}
    with pytest.raises(RecipeError, match=r"stages\[1\]\.importance: importance 'bn_scale' needs BatchNorm layers"):
        validate(parse_recipe(tiny_recipe), output=tmp_path)
    tiny_recipe["stages"][1]["importance"] = "l1"
    lines = validate(parse_recipe(tiny_recipe), output=tmp_path)
    # 64*12 + 12 + 12*10 + 10 = 910 params
    assert lines[0].startswith("output: ") and lines[3].startswith("student: nobn_factory:make(hidden=12), 910 params, ")
    assert lines[4:] == ["stage 1: distill (torch -> torch)", "stage 2: prune (torch -> torch)",
                         "stage 3: finetune (torch -> torch)", "stage 4: export (torch -> onnx)",
                         "stage 5: quantize (onnx -> onnx)"]


def test_text_classifier_end_to_end(tmp_path):
    """stdlib-text through every stage with text_transformers: the report holds every model, heads were
    pruned, and the final file's accuracy is its accuracy on the split-by-file test set."""
    spec = {"arch": "text_transformer", "depth": 1, "patch": 4}
    recipe = parse_recipe({
        "name": "text", "seed": 0,
        "data": {"source": "stdlib-text", "length": 32, "snippets_per_class": 30},
        "teacher": {"model": {**spec, "width": 16}, "train": {"epochs": 2, "lr": 0.003}},
        "student": {"model": {**spec, "width": 8, "heads": 2}},
        "stages": [{"type": "distill", "epochs": 1}, {"type": "prune", "ratio": 0.5, "head_ratio": 0.5, "round_to": None},
                   {"type": "finetune", "epochs": 1, "distill": True}, {"type": "export", "format": "onnx"},
                   {"type": "quantize", "mode": "int8_static", "calibration": {"samples": 64}}],
        "bench": {"rounds": 3, "calls": 2, "batch": 8}})
    report = run(recipe, output=tmp_path, quiet=True)
    by = models_by_name(report)
    assert list(by) == ["teacher", "scratch", *STAGE_NAMES, "final"]
    assert all(0.0 <= m["accuracy"] <= 1.0 and m["size_bytes"] > 0 for m in report["models"])
    assert report["data"]["input_shape"] == [32] and report["data"]["num_classes"] == 8
    heads = {r["layer"]: (r["before"], r["after"]) for r in by["02_prune"]["info"]["layers"]}
    assert heads["features.1.attn (heads)"] == (2, 1)
    assert by["02_prune"]["params"] < by["01_distill"]["params"] == by["scratch"]["params"]
    splits = load_data(recipe.data, recipe.seed)
    assert splits.fingerprint == report["data"]["fingerprint"]
    pred = ort_predict(tmp_path / "text" / "model.onnx", splits.test.x).argmax(1)
    assert by["final"]["accuracy"] == pytest.approx(float((pred == splits.test.y).mean()), abs=1e-12)


def test_stale_batchnorm_is_recalibrated_before_selection_export_and_measurement(tmp_path, monkeypatch):
    """A student with torchvision's MobileNetV3 BatchNorm settings (momentum 0.01): without recalibration the
    scratch and distilled students score at chance in eval mode (the false headline of issue 15)."""
    (tmp_path / "slownets.py").write_text(
        "from compress.models.zoo import cnn\n"
        "def make(width=8):\n"
        "    m = cnn((1, 8, 8), 10, width=width, depth=2)\n"
        "    for b in m.modules():\n"
        "        if b.__class__.__name__.startswith('BatchNorm'):\n"
        "            b.momentum, b.eps = 0.01, 0.001\n"
        "    return m\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = parse_recipe({"name": "slowbn", "teacher": {"model": {"arch": "cnn", "width": 8, "depth": 2}, "train": {"epochs": 2}},
                           "student": {"model": {"factory": "slownets:make"}},
                           "stages": [{"type": "distill", "epochs": 2}, {"type": "export"}],
                           "bench": {"rounds": 3, "calls": 2, "batch": 8}})
    report = run(recipe, output=tmp_path / "out", quiet=True)
    by = {m["name"]: m for m in report["models"]}
    assert by["scratch"]["info"]["bn_recalibrated"].startswith("BatchNorm momentum 0.01")
    assert by["01_distill"]["info"]["bn_recalibrated"].startswith("BatchNorm momentum 0.01")
    # the teacher has PyTorch's momentum; after 2 epochs its statistics may still lag (then the reason says so)
    assert not by["teacher"]["info"].get("bn_recalibrated", "eval-mode").startswith("BatchNorm momentum")
    assert not any(m["at_chance"] for m in report["models"]) and by["final"]["accuracy"] > 0.5
    assert any(n.startswith("BatchNorm statistics were stale and were re-estimated") and "scratch (" in n
               for n in report["notes"])


def test_a_model_at_chance_is_flagged_and_never_compared(tmp_path):
    recipe = parse_recipe({"name": "chance", "teacher": {"model": {"arch": "cnn", "width": 8, "depth": 2}, "train": {"epochs": 2}},
                           "student": {"model": {"arch": "mlp", "width": 8, "depth": 1}},
                           "stages": [{"type": "train", "epochs": 1, "lr": 1e-9}, {"type": "export"}],  # learns nothing
                           "bench": {"rounds": 3, "calls": 2, "batch": 8}})
    report = run(recipe, output=tmp_path, quiet=True)
    by = {m["role"]: m for m in report["models"]}
    assert by["scratch"]["at_chance"] and by["final"]["at_chance"] and not by["teacher"]["at_chance"]
    assert report["chance"]["level"] == max(report["data"]["test_class_counts"]) / report["data"]["test"]
    assert report["summary"]["final_vs_scratch"]["broken"] == ["scratch", "final"]
    assert report["notes"][0].startswith("AT CHANCE: ")
    md = (tmp_path / "chance" / "report.md").read_text()
    assert "**Not a meaningful comparison: the scratch and the final model scored at chance**" in md
    assert "AT CHANCE" in md
