"""task: lm recipes through compress.pipeline (compress/lm/task.py, compress/stages/lm_*.py) on a tiny text folder:
every model measured from its ONNX file, the run folder, the shared report schema, the verified caches (training,
stages, measurements), branch quantize stages, resume after an interrupt, CLI dispatch and ``compress check``."""

import dataclasses
import json
import shutil

import pytest
import yaml
from click.testing import CliRunner

from compress import pipeline
from compress.cli import cli
from compress.recipe import load_recipe
from compress.schema import REPORT_VERSION, validate_report
from compress.stages.base import REGISTRY

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
    assert "stage 5: quantize (onnx -> onnx)" in res.output
    res = runner.invoke(cli, [str(recipe), "-o", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out" / "tiny"
    report = json.loads((out / "report.json").read_text())
    names = [m["name"] for m in report["models"]]
    assert names == ["teacher", "scratch", "assistant0", "01_distill", "02_prune", "03_finetune", "04_export",
                     "05_quantize", "06_quantize", "final"]
    by = {m["name"]: m for m in report["models"]}
    assert [by[n]["role"] for n in ("teacher", "scratch", "assistant0", "01_distill", "final")] == [
        "teacher", "scratch", "assistant", "stage", "final"]
    # the run folder: one ONNX file per model, the final = the last stage's file
    assert sorted(p.name for p in (out / "stages").iterdir()) == [f"{n}.onnx" for n in names[3:9]]
    assert {"teacher.onnx", "scratch.onnx", "assistant0.onnx", "model.onnx"} <= {p.name for p in out.iterdir()}
    assert (out / "model.onnx").read_bytes() == (out / "stages" / "06_quantize.onnx").read_bytes()
    assert by["final"]["sha256"] == by["06_quantize"]["sha256"] and by["final"]["info"]["source"] == "06_quantize"
    # the exported student is the finetuned student's file, byte for byte: measured once, the same numbers
    assert by["04_export"]["sha256"] == by["03_finetune"]["sha256"]
    assert by["04_export"]["bits_per_byte"] == by["03_finetune"]["bits_per_byte"]
    assert by["04_export"]["info"]["max_abs_logits_kv_cache"] < 1e-3 and by["04_export"]["info"]["kv_cache"]
    assert by["01_distill"]["params"] < by["assistant0"]["params"] < by["teacher"]["params"]
    for m in report["models"]:
        assert 0 < m["bits_per_byte"] < 12 and m["perplexity"] == pytest.approx(2 ** m["bits_per_byte"], rel=1e-3)
        assert m["metric"] == {"name": "bits_per_byte", "value": m["bits_per_byte"], "higher_is_better": False}
        assert m["tokens"] > 0 and m["format"] == "onnx" and 0 <= m["agreement"] <= 1
    assert by["teacher"]["agreement"] == 1.0
    # quantize stages: side by side on the fp32 export, each tagged
    assert by["05_quantize"]["info"]["tag"] == "int8" and by["05_quantize"]["info"]["mode"] == "int8_dynamic"
    assert by["06_quantize"]["info"]["tag"] == "int4-b32-a4" and by["06_quantize"]["info"]["matmulnbits_nodes"] > 0
    assert by["05_quantize"]["size_bytes"] < by["04_export"]["size_bytes"]
    # generation rows: one per distinct file and thread count, named by the first model holding the file
    assert {(r["model"], r["threads"]) for r in report["bench"]} >= {("teacher", 1), ("06_quantize", 1)}
    assert not {r["model"] for r in report["bench"]} & {"04_export", "final"}  # same bytes as 03_finetune / 06_quantize
    assert set(report["samples"][0]["continuations"]) == {"teacher", "scratch", "assistant0", "01_distill", "02_prune",
                                                          "03_finetune", "05_quantize", "06_quantize"}
    assert [t["target"].split(" (")[0] for t in report["targets"]][0] == "distilled student"
    assert set(report["metrics"]) == {"bits_per_byte", "perplexity", "agreement"}
    prune = by["02_prune"]["info"]
    assert prune["params_after"] < prune["params_before"] == by["01_distill"]["params"]
    assert prune["params_after"] == by["02_prune"]["params"]
    assert by["scratch"]["info"]["steps"] == 6  # distill 4 + finetune 2: the student's budget
    assert 0 < by["scratch"]["info"]["val_bits_per_byte"] < 9
    # the student's stage log (the assistant's: test_the_stage_log_names_the_assistants_stages)
    assert [(s["index"], s["type"]) for s in report["stages"] if "model" not in s] == [
        (1, "distill"), (2, "prune"), (3, "finetune"), (4, "export"), (5, "quantize"), (6, "quantize")]
    assert not any(s["cached"] for s in report["stages"])
    own = [s for s in report["stages"] if "model" not in s]
    assert own[0]["config"]["level"] == "both" and own[4]["config"]["mode"] == "int8_dynamic"
    md = (out / "report.md").read_text()
    assert "## Generated samples" in md and "**teacher**" in md and "06_quantize (int4-b32-a4)" in md
    assert "![bits per byte vs decode speed](report.png)" in md
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report["files"]["plot"]
    # a second run takes every trained model and stage from the cache
    res = runner.invoke(cli, [str(recipe), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "teacher: reusing cached weights" in res.output and "scratch: reusing cached weights" in res.output
    assert "stage 6/6 quantize: cached" in res.output and "measurements: cached" in res.output


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


def _small(tmp_path, lm_docs, text=SMALL):
    lm_docs("def g{i}(y):\n    return y * {i}\n", 20)
    path = tmp_path / "small.yaml"
    path.write_text(text)
    return path


def test_second_run_into_a_locked_output_folder_fails_like_the_vision_pipeline(tmp_path, lm_docs):
    from compress.errors import CompressError
    from compress.pipeline import exclusive

    recipe = load_recipe(_small(tmp_path, lm_docs))
    out = tmp_path / "out" / "small"
    with exclusive(out):  # what a first run holds while it writes
        with pytest.raises(CompressError) as err:
            pipeline.run(recipe, output=tmp_path / "out", quiet=True)
    assert str(err.value) == f"another compress run is writing to {out}; wait for it or use --output"
    assert not (tmp_path / "out" / ".cache").exists()  # it failed before any training
    res = CliRunner().invoke(cli, [str(tmp_path / "small.yaml"), "-o", str(tmp_path / "out"), "-q"])
    assert res.exit_code == 0, res.output  # the lock is released with the first run
    assert (out / "report.json").exists()


def test_rerun_after_an_interrupt_reuses_the_finished_models(tmp_path, monkeypatch, lm_docs):
    from compress.lm import context

    recipe = load_recipe(_small(tmp_path, lm_docs))
    real, calls = context.train_lm, []

    def interrupted(model, *a, what="", **kw):  # the teacher trains, Ctrl-C during the student's distillation
        calls.append(what)
        if what == "student distill" and calls.count(what) == 1:
            raise KeyboardInterrupt
        return real(model, *a, what=what, **kw)

    monkeypatch.setattr(context, "train_lm", interrupted)
    try:  # not pytest.raises: pytest treats a KeyboardInterrupt as the user stopping the session
        pipeline.run(recipe, output=tmp_path / "out", quiet=True)
        raise AssertionError("the interrupt did not propagate")
    except KeyboardInterrupt:
        pass
    assert calls == ["teacher", "student distill"]
    assert not (tmp_path / "out" / "small" / "report.json").exists()  # nothing half-written was published
    report = pipeline.run(recipe, output=tmp_path / "out", quiet=True)
    assert calls == ["teacher", "student distill", "student distill"]  # the teacher came from the cache; the lock was released by the interrupt
    by = {m["name"]: m for m in report["models"]}
    assert by["teacher"]["info"]["cached"] is True and by["01_distill"]["info"]["cached"] is False
    assert report["stages"][0]["cached"] is False


def test_the_stage_log_names_the_assistants_stages(tmp_path, lm_docs):
    path = _small(tmp_path, lm_docs, SMALL.replace(
        "student:", "assistants:\n  - model: {arch: gpt, width: 12, layers: 1, heads: 2, context: 16}\nstudent:"))
    report = pipeline.run(load_recipe(path), output=tmp_path / "out", quiet=True)
    assert [m["name"] for m in report["models"]] == ["teacher", "assistant0", "01_distill", "final"]
    assert [(s["index"], s["type"], s.get("model")) for s in report["stages"]] == [
        (1, "distill", "assistant0"), (1, "distill", None)]


def test_accuracy_aware_quantize_stage_ships_a_file_scored_on_test(tmp_path, lm_docs):
    path = _small(tmp_path, lm_docs, SMALL.replace(
        "stages:\n  - {type: distill, steps: 2, batch_size: 4}\n",
        "stages:\n  - {type: distill, steps: 2, batch_size: 4}\n  - {type: export}\n"
        "  - {type: quantize, mode: int4_weight_only, max_bpb_increase: 8}\n"
        "  - {type: quantize, mode: int8_dynamic, max_bpb_increase: 0}\n"))
    report = pipeline.run(load_recipe(path), output=tmp_path / "out", quiet=True)
    by = {m["name"]: m for m in report["models"]}
    loose, strict = by["03_quantize"]["info"], by["04_quantize"]["info"]
    assert loose["tag"] == "int4-b32-a4-max8" and strict["tag"] == "int8-max0"
    assert loose["fp32_layers"] == [] and loose["budget_met"] and loose["matmulnbits_nodes"] == 7
    # budget 0: the search ran (sensitivity of all 7 MatMuls, greedy steps) and its choice is reported either way
    assert len(strict["tables"][0]["rows"]) == 7
    shipped = [row for row in strict["tables"][1]["rows"] if row[5] == "chosen"]
    assert len(shipped) == 1 and shipped[0][0] == len(strict["fp32_layers"])
    assert strict["budget_met"] == (strict["val_bpb_increase"] <= 1e-6)
    assert strict["quantized_layers"] == 7 - len(strict["fp32_layers"]) >= 1
    # the shipped files are scored again on the test split, like every other model
    assert abs(by["04_quantize"]["bits_per_byte"] - by["02_export"]["bits_per_byte"]) < 0.5
    assert by["final"]["sha256"] == by["04_quantize"]["sha256"]
    md = (tmp_path / "out" / "small" / "report.md").read_text()
    assert "Per-layer sensitivity on validation (INT8, each layer quantized alone)" in md


def test_another_teacher_is_not_served_its_predecessors_student(tmp_path, lm_docs):
    """The teacher's architecture is part of the distilled student's cache key (same train settings)."""
    path = _small(tmp_path, lm_docs)
    runner = CliRunner()
    outputs = []
    for width in (16, 24, 16):
        path.write_text(SMALL.replace("width: 16,", f"width: {width},"))
        res = runner.invoke(cli, [str(path), "-o", str(tmp_path / "out")])
        assert res.exit_code == 0, res.output
        outputs.append(res.output)
    assert "stage 1/1 distill: cached" not in outputs[1] and "teacher: reusing cached weights" not in outputs[1]
    assert "stage 1/1 distill: cached" in outputs[2] and "teacher: reusing cached weights" in outputs[2]


def test_a_distill_stage_chain_trains_each_step_from_the_one_before(tmp_path, lm_docs, monkeypatch):
    """teacher -> chain[0] -> chain[1] -> student, each by the stage's settings; every step scored on test."""
    from compress.lm import context

    path = _small(tmp_path, lm_docs, SMALL.replace(
        "  - {type: distill, steps: 2, batch_size: 4}\nbaseline: none",
        "  - {type: distill, steps: 2, batch_size: 4, chain: [{arch: gpt, width: 14, layers: 1, heads: 2, context: 16},"
        " {arch: gpt, width: 12, layers: 1, heads: 2, context: 16}]}\nbaseline: scratch"))
    real, tutors = context.train_lm, []

    def spy(model, *a, what="", teacher=None, **kw):
        tutors.append((what, model.cfg.width, None if teacher is None else teacher.cfg.width))
        return real(model, *a, what=what, teacher=teacher, **kw)

    monkeypatch.setattr(context, "train_lm", spy)
    lines = pipeline.validate(load_recipe(path), tmp_path / "out")
    assert [ln.split(":")[0] for ln in lines[2:6]] == ["teacher", "chain step 0 (stages[0])", "chain step 1 (stages[0])",
                                                      "student"]
    report = pipeline.run(load_recipe(path), output=tmp_path / "out", quiet=True)
    assert tutors == [("teacher", 16, None), ("scratch", 8, None), ("assistant0 distill", 14, 16),
                      ("assistant1 distill", 12, 14), ("student distill", 8, 12)]
    by = {m["name"]: m for m in report["models"]}
    assert [m["name"] for m in report["models"]] == ["teacher", "scratch", "assistant0", "assistant1", "01_distill",
                                                     "final"]
    assert by["assistant0"]["role"] == by["assistant1"]["role"] == "assistant"
    assert by["assistant1"]["params"] < by["assistant0"]["params"] < by["teacher"]["params"]
    assert 0 < by["assistant1"]["bits_per_byte"] < 9 and by["assistant1"]["agreement"] is not None
    assert [c["model"] for c in by["01_distill"]["info"]["chain"]] == ["assistant0", "assistant1"]
    assert by["scratch"]["info"]["steps"] == 2  # the student's steps only
    # a rerun takes every chain step from the cache (the stage's entry holds them)
    tutors.clear()
    again = pipeline.run(load_recipe(path), output=tmp_path / "out", quiet=True)
    assert tutors == []
    assert [m["sha256"] for m in again["models"]] == [m["sha256"] for m in report["models"]]


def test_weights_files_edited_in_place_are_not_served_stale_models(tmp_path, lm_docs):
    """Teacher and student weights are keyed by their bytes, not their paths."""
    import torch
    from safetensors.torch import save_file

    from compress.lm.model import GPT, GPTConfig

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
        assert report["models"][0]["info"]["weights"] == str(tmp_path / "t.safetensors")
        return report["stages"][0]["cached"]

    assert student_cached() is False
    assert student_cached() is True  # unchanged files: reused
    write("t.safetensors", GPTConfig(width=16, layers=1, heads=2, context=16), 1)  # the teacher's file, edited
    assert student_cached() is False
    assert student_cached() is True
    write("s.safetensors", GPTConfig(width=8, layers=1, heads=2, context=16), 1)  # the student's starting weights
    assert student_cached() is False


# ---- the stage cache: what a rerun recomputes ----------------------------------------------------------------------

BRANCH = SMALL.replace("  - {type: distill, steps: 2, batch_size: 4}\n",
                       "  - {type: distill, steps: 2, batch_size: 4}\n  - {type: export}\n"
                       "  - {type: quantize, mode: int8_dynamic}\n"
                       "  - {type: quantize, mode: int4_weight_only, block_size: 32, accuracy_level: 4}\n"
                       ).replace("baseline: none", "baseline: scratch")


@pytest.fixture(scope="module")
def branch_run(tmp_path_factory):
    """One run of BRANCH (distill, export, int8, int4; scratch baseline) into ``root/out``; the tests below rerun
    variants of it under other names into the same output root, so they share its cache."""
    root = tmp_path_factory.mktemp("branch")
    docs = root / "docs"
    docs.mkdir()
    for i in range(10):
        (docs / f"{i:02d}.txt").write_text(f"def g{i}(y):\n    return y * {i}\n" * 20)
    recipe = root / "small.yaml"
    recipe.write_text(BRANCH)
    res = CliRunner().invoke(cli, ["run", str(recipe), "-o", str(root / "out"), "--quiet"])
    assert res.exit_code == 0, res.output
    return {"root": root, "recipe": recipe, "run": root / "out" / "small",
            "report": json.loads((root / "out" / "small" / "report.json").read_text())}


@pytest.fixture
def counted(monkeypatch):
    """Every training step budget (``train_lm``) and every stage function call of the LM stages, counted."""
    from compress.lm import context

    calls = []
    real_train = context.train_lm

    def train(model, *a, what="", **kw):
        calls.append(("train", what))
        return real_train(model, *a, what=what, **kw)

    monkeypatch.setattr(context, "train_lm", train)
    for name, spec in list(REGISTRY["lm"].items()):
        def fn(art, cfg, ctx, _fn=spec.fn, _name=name):
            calls.append((_name, getattr(cfg, "mode", None)))
            return _fn(art, cfg, ctx)

        monkeypatch.setitem(REGISTRY["lm"], name, dataclasses.replace(spec, fn=fn))
    return calls


def _variant(branch_run, name: str, edit=None):
    """BRANCH under another name, with ``edit(stages)`` applied; returns (report, CLI output)."""
    data = yaml.safe_load(BRANCH)
    data["name"] = name
    if edit:
        edit(data["stages"])
    path = branch_run["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(cli, ["run", str(path), "-o", str(branch_run["root"] / "out")])
    assert res.exit_code == 0, res.output
    return json.loads((branch_run["root"] / "out" / name / "report.json").read_text()), res.output


def test_a_rerun_with_everything_cached_recomputes_nothing(branch_run, counted):
    report, output = _variant(branch_run, "small-again")
    assert counted == []  # no training, no stage function, no export check
    assert [s["cached"] for s in report["stages"]] == [True, True, True, True]
    for i, t in enumerate(["distill", "export", "quantize", "quantize"]):
        assert f"stage {i + 1}/4 {t}: cached " in output
    assert "teacher: reusing cached weights" in output and "scratch: reusing cached weights" in output
    assert "measurements: cached" in output and "measuring" not in output
    first = branch_run["report"]
    assert [(m["name"], m["sha256"], m["bits_per_byte"]) for m in report["models"]] == [
        (m["name"], m["sha256"], m["bits_per_byte"]) for m in first["models"]]
    assert report["bench"] == first["bench"]  # the measurements themselves came from the cache


def test_editing_the_last_quantize_stage_recomputes_only_it(branch_run, counted):
    def edit(stages):
        stages[3]["block_size"] = 64

    report, output = _variant(branch_run, "small-int4-b64", edit)
    assert counted == [("quantize", "int4_weight_only")]
    assert [s["cached"] for s in report["stages"]] == [True, True, True, False]
    assert "stage 4/4 quantize: cached" not in output and "stage 3/4 quantize: cached" in output
    by, first = {m["name"]: m for m in report["models"]}, {m["name"]: m for m in branch_run["report"]["models"]}
    assert by["04_quantize"]["info"]["tag"] == "int4-b64-a4" and by["04_quantize"]["sha256"] != first["04_quantize"]["sha256"]
    for name in ("teacher", "scratch", "01_distill", "02_export", "03_quantize"):
        assert by[name]["sha256"] == first[name]["sha256"]
    assert "measurements: cached" not in output  # a new file: measured again (all files, one interleaved session)


def test_editing_the_int8_stage_does_not_recompute_the_int4_stage_after_it(branch_run, counted):
    def edit(stages):
        stages[2]["per_channel"] = False

    report, output = _variant(branch_run, "small-int8-per-tensor", edit)
    assert counted == [("quantize", "int8_dynamic")]  # the int4 stage quantizes the export, not the int8 file
    assert [s["cached"] for s in report["stages"]] == [True, True, False, True]
    assert "stage 4/4 quantize: cached" in output
    by, first = {m["name"]: m for m in report["models"]}, {m["name"]: m for m in branch_run["report"]["models"]}
    assert by["03_quantize"]["info"]["per_channel"] is False
    assert by["04_quantize"]["sha256"] == first["04_quantize"]["sha256"] == by["final"]["sha256"]


def test_an_lm_report_follows_the_shared_schema(branch_run):
    report = branch_run["report"]
    schema = validate_report(report)
    assert report["schema_version"] == REPORT_VERSION
    assert schema.task == "lm" and {m.role for m in schema.models} == {"teacher", "scratch", "stage", "final"}
    assert [m["name"] for m in report["models"]] == ["teacher", "scratch", "01_distill", "02_export", "03_quantize",
                                                     "04_quantize", "final"]
    assert {m["file"] for m in report["models"]} == set(report["digests"]) == {
        "teacher.onnx", "scratch.onnx", "model.onnx", "stages/01_distill.onnx", "stages/02_export.onnx",
        "stages/03_quantize.onnx", "stages/04_quantize.onnx"}
    final = schema.model("final")
    assert final.metric.name == "bits_per_byte" and final.metric.higher_is_better is False
    assert report["data"]["digest"] and report["recipe"]["task"] == "lm"
    assert report["recipe_file"] == str(branch_run["recipe"])
    assert report["warnings"] == []
    # every model's latency as search and the gate read it: decode time per token at 1 thread, from its file's row
    rows = {r["model"]: r for r in report["bench"] if r["threads"] == 1}
    first = {}
    for m in report["models"]:
        first.setdefault(m["sha256"], m["name"])
        row = rows[first[m["sha256"]]]
        assert m["latency_ms"]["p50"] == pytest.approx(row["decode_ms"]["p50"] / row["new_tokens"])
    # the same checks compress check runs on a report it reads
    from compress.schema import read_report

    assert read_report(branch_run["run"] / "report.json")[1] == schema


# ---- compress check ----------------------------------------------------------------------------------------------

FAST = ["--rounds", "5", "--calls", "2"]


def test_compress_check_gates_an_lm_run(branch_run, tmp_path):
    run = tmp_path / "small"
    shutil.copytree(branch_run["run"], run)
    base = tmp_path / "baseline.json"
    runner = CliRunner()
    r = runner.invoke(cli, ["check", str(run), "--baseline", str(base), "--update-baseline", "--repeats", "2", *FAST])
    assert r.exit_code == 0, r.output
    stored = json.loads(base.read_text())
    final = next(m for m in branch_run["report"]["models"] if m["role"] == "final")
    assert stored["metric"] == {"name": "bits_per_byte", "value": pytest.approx(final["bits_per_byte"], abs=1e-3),
                                "higher_is_better": False}
    assert set(stored["tolerance"]) == {"bits_per_byte", "size", "latency"}
    assert stored["size_bytes"] == final["size_bytes"]
    r = runner.invoke(cli, ["check", str(run), "--baseline", str(base), *FAST, "--latency-tol", "5"])
    assert r.exit_code == 0, r.output
    assert "re-measured from model.onnx on the test split" in r.output and "check: passed" in r.output
    # a report edited to a better number than its file measures is refused
    edited = json.loads((run / "report.json").read_text())
    for m in edited["models"]:
        if m["role"] == "final":
            m["bits_per_byte"] = m["metric"]["value"] = 1.0
    (run / "report.json").write_text(json.dumps(edited))
    r = runner.invoke(cli, ["check", str(run), "--baseline", str(base), *FAST, "--latency-tol", "5"])
    assert r.exit_code == 2, r.output
    assert "report.json does not match its model file: it says bits_per_byte 1.0000, model.onnx measures" in r.output
    shutil.copyfile(branch_run["run"] / "report.json", run / "report.json")
    # another valid model in place of the final one
    shutil.copyfile(run / "stages" / "02_export.onnx", run / "model.onnx")
    r = runner.invoke(cli, ["check", str(run), "--baseline", str(base), *FAST, "--latency-tol", "5"])
    assert r.exit_code == 2, r.output
    assert f"model file changed since the report: {run / 'model.onnx'} has sha256" in r.output


@pytest.mark.parametrize("context", [8, 64])
def test_the_gates_decode_timer_fits_the_files_context(tmp_path, context):
    """compress check times greedy decoding with the KV cache; a recipe's context may be as small as 8 positions."""
    import torch

    from compress.lm.model import GPT, GPTConfig
    from compress.lm.onnx import export_decoder, quantize_decoder
    from compress.lm.task import DECODE_TOKENS, LMTask

    torch.manual_seed(0)
    fp32 = export_decoder(GPT(GPTConfig(width=16, layers=1, heads=2, context=context)), tmp_path / "fp32.onnx")
    quantize_decoder(fp32, tmp_path / "int8.onnx", "int8_dynamic")  # its position table is quantized too
    timers = LMTask.timers({"final": tmp_path / "int8.onnx", "teacher": fp32}, batch=2, threads=1)
    lengths = {name: fn().shape for name, fn in timers.items()}
    assert lengths == {"final": (2, 6), "teacher": (2, 6)} if context == 8 else {
        "final": (2, DECODE_TOKENS), "teacher": (2, DECODE_TOKENS)}


@pytest.mark.slow
def test_nproc_2_trains_an_lm_recipe_like_one_process(tmp_path, lm_docs):
    """`compress run --nproc 2` on a language-model recipe: every training step data-parallel (the same global batch
    shared between the ranks, compress.lm.train), the teacher's sequences made once; only rank 0 writes."""
    import subprocess
    import sys

    path = _small(tmp_path, lm_docs, SMALL.replace("  - {type: distill, steps: 2, batch_size: 4}",
                                                   "  - {type: distill, level: both, steps: 4, batch_size: 4, "
                                                   "sequence: {samples: 4, prompt: 4}}\n  - {type: export}")
                  .replace("baseline: none", "baseline: scratch"))
    reports = {}
    for n in (1, 2):
        done = subprocess.run([sys.executable, "-m", "compress", "run", str(path), "-o", str(tmp_path / f"n{n}"), "-q",
                               "--nproc", str(n)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        reports[n] = {m["name"]: m for m in json.loads((tmp_path / f"n{n}" / "small" / "report.json").read_text())["models"]}
    assert list(reports[1]) == list(reports[2]) == ["teacher", "scratch", "01_distill", "02_export", "final"]
    for name, m in reports[1].items():  # float summation order differs between 1 and 2 processes, nothing else
        assert reports[2][name]["bits_per_byte"] == pytest.approx(m["bits_per_byte"], abs=1e-3), name


def test_chain_keys_are_the_keys_the_build_uses_with_assistants_and_branches(tmp_path, lm_docs):
    """compress search tells models apart by pipeline.chain_keys: they must be the stage keys the run stores."""
    from compress.cache import STAGE_KIND, Cache

    path = _small(tmp_path, lm_docs, SMALL.replace(
        "student:", "assistants:\n  - model: {arch: gpt, width: 12, layers: 1, heads: 2, context: 16}\nstudent:").replace(
        "  - {type: distill, steps: 2, batch_size: 4}",
        "  - {type: distill, steps: 2, batch_size: 4}\n  - {type: export}\n  - {type: quantize, mode: int8_dynamic}\n"
        "  - {type: quantize, mode: int4_weight_only}"))
    recipe = load_recipe(path)
    pipeline.run(recipe, output=tmp_path / "out", quiet=True)
    keys = pipeline.chain_keys(recipe, pipeline.prepare(recipe))
    assert len(keys) == 4 and len(set(keys)) == 4
    cache = Cache(tmp_path / "out" / ".cache")
    assert all(cache.has(STAGE_KIND, k) for k in keys)
