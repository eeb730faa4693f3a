"""compress/lm/pipeline.py end to end on a tiny text folder: every model scored, files, report, CLI dispatch."""

import json

from click.testing import CliRunner

from compress.cli import cli

RECIPE = """\
task: lm
name: tiny
threads: 1
data: {source: text, path: docs, max_bytes: 100000, split: {val: 0.2, test: 0.2}}
teacher:
  model: {arch: gpt, width: 32, layers: 2, heads: 2, context: 16}
  train: {steps: 6, batch_size: 8}
assistants:
  - model: {arch: gpt, width: 24, layers: 1, heads: 2, context: 16}
student:
  model: {arch: gpt, width: 16, layers: 1, heads: 2, context: 16}
stages:
  - {type: distill, level: both, steps: 4, batch_size: 8, sequence: {samples: 8, prompt: 4}}
  - {type: prune, heads: 0.5, mlp: 0.5}
  - {type: finetune, steps: 2, batch_size: 8}
  - {type: export}
  - {type: quantize, mode: int8_dynamic}
  - {type: quantize, mode: int4_weight_only, block_size: 32, accuracy_level: 4}
eval: {max_tokens: 256}
bench: {prompt: 4, new_tokens: 4, rounds: 3, calls: 1}
samples: {count: 1, prompt: 6, new_tokens: 6}
"""


def test_lm_recipe_end_to_end(tmp_path, lm_docs):
    lm_docs()
    recipe = tmp_path / "lm.yaml"
    recipe.write_text(RECIPE)
    runner = CliRunner()
    res = runner.invoke(cli, ["validate", str(recipe), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "train 6 docs" in res.output and "valid" in res.output
    res = runner.invoke(cli, [str(recipe), "-o", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out" / "tiny"
    report = json.loads((out / "report.json").read_text())
    names = [m["name"] for m in report["models"]]
    assert names == ["teacher", "assistant0", "scratch", "student", "teacher.onnx", "student.onnx",
                     "student-int8.onnx", "student-int4-b32-a4.onnx"]
    by = {m["name"]: m for m in report["models"]}
    # the ONNX student scores like the torch student (same weights, fp32)
    assert abs(by["student.onnx"]["bits_per_byte"] - by["student"]["bits_per_byte"]) < 1e-3
    assert by["student"]["params"] < by["assistant0"]["params"] < by["teacher"]["params"]
    assert {(r["model"], r["threads"]) for r in report["bench"]} >= {("teacher", 1), ("student-int4-b32-a4", 1)}
    assert [t["target"].split(":")[0] for t in report["targets"]][0] == "distilled student"
    prune = next(s for s in report["stages"] if s["stage"] == "1:prune")
    assert prune["info"]["params_after"] < prune["info"]["params_before"]
    scratch = next(s for s in report["stages"] if s["stage"] == "scratch")
    assert scratch["info"]["steps"] == 6  # distill 4 + finetune 2: the student's budget
    assert 0 < scratch["info"]["val_bits_per_byte"] < 9
    md = (out / "report.md").read_text()
    assert "## Generated samples" in md and "**teacher**" in md and "student-int4-b32-a4.onnx" in md
    assert "![bits per byte vs decode speed](report.png)" in md
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report["files"]["report_png"]
    # a second run reuses the trained models from the cache
    res = runner.invoke(cli, [str(recipe), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0 and "reused from the cache" in res.output


SMALL = """\
task: lm
name: small
threads: 1
data: {source: text, path: docs, max_bytes: 100000, split: {val: 0.2, test: 0.2}}
teacher:
  model: {arch: gpt, width: 16, layers: 1, heads: 2, context: 16}
  train: {steps: 3, batch_size: 4}
student:
  model: {arch: gpt, width: 8, layers: 1, heads: 2, context: 16}
stages:
  - {type: distill, steps: 2, batch_size: 4}
baseline: none
eval: {max_tokens: 128}
bench: {prompt: 4, new_tokens: 4, rounds: 3, calls: 1}
samples: {count: 0, prompt: 4, new_tokens: 4}
"""


def _small(tmp_path, lm_docs):
    lm_docs("def g{i}(y):\n    return y * {i}\n", 20)
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    return path


def test_second_run_into_a_locked_output_folder_fails_like_the_vision_pipeline(tmp_path, lm_docs):
    import pytest

    from compress.errors import CompressError
    from compress.lm.pipeline import run
    from compress.pipeline import exclusive
    from compress.recipe import load_recipe

    recipe = load_recipe(_small(tmp_path, lm_docs))
    out = tmp_path / "out" / "small"
    with exclusive(out):  # what a first run holds while it writes
        with pytest.raises(CompressError) as err:
            run(recipe, output=tmp_path / "out", quiet=True)
    assert str(err.value) == f"another compress run is writing to {out}; wait for it or use --output"
    assert not (tmp_path / "out" / ".cache").exists()  # it failed before any training
    res = CliRunner().invoke(cli, [str(tmp_path / "small.yaml"), "-o", str(tmp_path / "out"), "-q"])
    assert res.exit_code == 0, res.output  # the lock is released with the first run
    assert (out / "report.json").exists()


def test_rerun_after_an_interrupt_reuses_the_finished_models(tmp_path, monkeypatch, lm_docs):
    from compress.lm import pipeline
    from compress.recipe import load_recipe

    recipe = load_recipe(_small(tmp_path, lm_docs))
    real, calls = pipeline.train_lm, []

    def interrupted(model, *a, what="", **kw):  # the teacher trains, Ctrl-C during the student's distillation
        calls.append(what)
        if what == "student distill" and calls.count(what) == 1:
            raise KeyboardInterrupt
        return real(model, *a, what=what, **kw)

    monkeypatch.setattr(pipeline, "train_lm", interrupted)
    try:  # not pytest.raises: pytest treats a KeyboardInterrupt as the user stopping the session
        pipeline.run(recipe, output=tmp_path / "out", quiet=True)
        raise AssertionError("the interrupt did not propagate")
    except KeyboardInterrupt:
        pass
    assert calls == ["teacher", "student distill"]
    report = pipeline.run(recipe, output=tmp_path / "out", quiet=True)
    assert calls == ["teacher", "student distill", "student distill"]  # the teacher came from the cache; the lock was released by the interrupt
    teacher = next(s for s in report["stages"] if s["stage"] == "teacher")
    assert teacher["info"]["cached"] is True


def test_accuracy_aware_quantize_stage_ships_a_file_scored_on_test(tmp_path, lm_docs):
    from compress.lm.pipeline import run
    from compress.recipe import load_recipe

    path = _small(tmp_path, lm_docs)
    path.write_text(SMALL.replace("stages:\n  - {type: distill, steps: 2, batch_size: 4}\n",
                                  "stages:\n  - {type: distill, steps: 2, batch_size: 4}\n  - {type: export}\n"
                                  "  - {type: quantize, mode: int4_weight_only, max_bpb_increase: 8}\n"
                                  "  - {type: quantize, mode: int8_dynamic, max_bpb_increase: 0}\n"))
    report = run(load_recipe(path), output=tmp_path / "out", quiet=True)
    by = {m["name"]: m for m in report["models"]}
    assert {"student-int4-b32-a4-max8.onnx", "student-int8-max0.onnx"} <= set(by)
    stages = {s["model"]: s["info"] for s in report["stages"] if s["stage"].endswith(":quantize")}
    loose, strict = stages["student-int4-b32-a4-max8"], stages["student-int8-max0"]
    assert loose["fp32_layers"] == [] and loose["budget_met"] and loose["matmulnbits_nodes"] == 7
    # budget 0: the search ran (sensitivity of all 7 MatMuls, greedy steps) and its choice is reported either way
    assert len(strict["tables"][0]["rows"]) == 7
    shipped = [row for row in strict["tables"][1]["rows"] if row[5] == "shipped"]
    assert len(shipped) == 1 and shipped[0][0] == len(strict["fp32_layers"])
    assert strict["budget_met"] == (strict["val_bpb_increase"] <= 1e-6)
    assert strict["quantized_layers"] == 7 - len(strict["fp32_layers"]) >= 1
    # the shipped files are scored again on the test split, like every other model
    assert abs(by["student-int8-max0.onnx"]["bits_per_byte"] - by["student.onnx"]["bits_per_byte"]) < 0.5
    md = (tmp_path / "out" / "small" / "report.md").read_text()
    assert "Per-layer sensitivity on validation (INT8, each layer quantized alone)" in md


def test_another_teacher_is_not_served_its_predecessors_student(tmp_path, lm_docs):
    """The teacher's architecture is part of the distilled student's cache key (same train settings)."""
    lm_docs("def g{i}(y):\n    return y * {i}\n")
    text = """\
task: lm
name: t
threads: 1
data: {source: text, path: docs, max_bytes: 100000, split: {val: 0.2, test: 0.2}}
teacher:
  model: {arch: gpt, width: WIDTH, layers: 1, heads: 2, context: 16}
  train: {steps: 2, batch_size: 4}
student:
  model: {arch: gpt, width: 16, layers: 1, heads: 2, context: 16}
stages:
  - {type: distill, steps: 2, batch_size: 4}
baseline: none
eval: {max_tokens: 64}
bench: {prompt: 4, new_tokens: 4}
samples: {count: 0, prompt: 4, new_tokens: 4}
"""
    recipe = tmp_path / "lm.yaml"
    runner = CliRunner()
    outputs = []
    for width in (32, 24, 32):
        recipe.write_text(text.replace("WIDTH", str(width)))
        res = runner.invoke(cli, [str(recipe), "-o", str(tmp_path / "out")])
        assert res.exit_code == 0, res.output
        outputs.append(res.output)
    assert "student distill: reused from the cache" not in outputs[1]
    assert "student distill: reused from the cache" in outputs[2] and "teacher: reused from the cache" in outputs[2]


def test_a_distill_stage_chain_trains_each_step_from_the_one_before(tmp_path, lm_docs, monkeypatch):
    """teacher -> chain[0] -> chain[1] -> student, each by the stage's settings; every step scored on test."""
    from compress.lm import pipeline
    from compress.recipe import load_recipe

    path = _small(tmp_path, lm_docs)
    path.write_text(SMALL.replace(
        "  - {type: distill, steps: 2, batch_size: 4}\nbaseline: none",
        "  - {type: distill, steps: 2, batch_size: 4, chain: [{arch: gpt, width: 14, layers: 1, heads: 2, context: 16},"
        " {arch: gpt, width: 12, layers: 1, heads: 2, context: 16}]}\nbaseline: scratch"))
    real, tutors = pipeline.train_lm, []

    def spy(model, *a, what="", teacher=None, **kw):
        tutors.append((what, model.cfg.width, None if teacher is None else teacher.cfg.width))
        return real(model, *a, what=what, teacher=teacher, **kw)

    monkeypatch.setattr(pipeline, "train_lm", spy)
    lines = pipeline.validate(load_recipe(path), tmp_path / "out")
    assert [ln.split(":")[0] for ln in lines[1:5]] == ["teacher", "chain step 0 (stages[0])", "chain step 1 (stages[0])",
                                                      "student"]
    report = pipeline.run(load_recipe(path), output=tmp_path / "out", quiet=True)
    assert tutors == [("teacher", 16, None), ("assistant0 distill", 14, 16), ("assistant1 distill", 12, 14),
                      ("student distill", 8, 12), ("scratch", 8, None)]
    by = {m["name"]: m for m in report["models"]}
    assert by["assistant0"]["role"] == by["assistant1"]["role"] == "assistant"
    assert 0 < by["assistant1"]["bits_per_byte"] < 9 and by["assistant1"]["agreement"] is not None
    assert next(s for s in report["stages"] if s["stage"] == "scratch")["info"]["steps"] == 2  # the student's steps only
    # a rerun takes every chain step from the cache
    tutors.clear()
    pipeline.run(load_recipe(path), output=tmp_path / "out", quiet=True)
    assert tutors == []


def test_weights_files_edited_in_place_are_not_served_stale_models(tmp_path, lm_docs):
    """Teacher and student weights are keyed by their bytes, not their paths."""
    import torch
    from safetensors.torch import save_file

    from compress.lm import pipeline
    from compress.lm.model import GPT, GPTConfig
    from compress.recipe import load_recipe

    path = _small(tmp_path, lm_docs)

    def write(file: str, cfg: GPTConfig, seed: int) -> None:
        torch.manual_seed(seed)
        save_file(GPT(cfg).state_dict(), str(tmp_path / file))

    write("t.safetensors", GPTConfig(width=16, layers=1, heads=2, context=16), 0)
    write("s.safetensors", GPTConfig(width=8, layers=1, heads=2, context=16), 0)
    path.write_text(SMALL.replace("  train: {steps: 3, batch_size: 4}\n", "  weights: t.safetensors\n")
                    .replace("student:\n  model: {arch: gpt, width: 8, layers: 1, heads: 2, context: 16}\n",
                             "student:\n  model: {arch: gpt, width: 8, layers: 1, heads: 2, context: 16}\n"
                             "  weights: s.safetensors\n"))

    def student_cached() -> bool:
        report = pipeline.run(load_recipe(path), output=tmp_path / "out", quiet=True)
        return next(s for s in report["stages"] if s["stage"].endswith(":distill"))["info"].get("cached", False)

    assert student_cached() is False
    assert student_cached() is True  # unchanged files: reused
    write("t.safetensors", GPTConfig(width=16, layers=1, heads=2, context=16), 1)  # the teacher's file, edited
    assert student_cached() is False
    assert student_cached() is True
    write("s.safetensors", GPTConfig(width=8, layers=1, heads=2, context=16), 1)  # the student's starting weights
    assert student_cached() is False
