"""compress.run / compress.validate (compress/__init__.py): a recipe or its path goes to compress.pipeline, which runs it
by its task (classify or lm)."""

import json

import compress
from compress.lm.recipe import LMRecipe

LM = """\
task: lm
name: api
threads: 1
data: {source: text, path: docs, max_bytes: 100000, split: {val: 0.2, test: 0.2}}
teacher:
  model: {arch: gpt, width: 16, layers: 1, heads: 2, context: 16}
  train: {steps: 2, batch_size: 4}
student:
  model: {arch: gpt, width: 8, layers: 1, heads: 2, context: 16}
stages:
  - {type: distill, steps: 2, batch_size: 4}
  - {type: export}
baseline: none
eval: {max_tokens: 128}
bench: {prompt: 4, new_tokens: 4, rounds: 3, calls: 1}
samples: {count: 0, prompt: 4, new_tokens: 4}
"""


def _lm_recipe(tmp_path, lm_docs):
    lm_docs("x{i} = {i} * 2\n")
    path = tmp_path / "api.yaml"
    path.write_text(LM)
    return path


def test_validate_dispatches_an_lm_recipe_path_and_object(tmp_path, lm_docs):
    path = _lm_recipe(tmp_path, lm_docs)
    lines = compress.validate(str(path), output=tmp_path / "out")
    assert lines[0] == f"output: {tmp_path / 'out' / 'api'}"
    assert lines[1].startswith("data: text, train 6 docs")
    assert lines[-2:] == ["stage 1: distill (torch -> torch)", "stage 2: export (torch -> onnx)"]
    recipe = compress.load_recipe(path)
    assert isinstance(recipe, LMRecipe)
    assert compress.validate(recipe, output=tmp_path / "out") == lines


def test_run_dispatches_an_lm_recipe_path(tmp_path, lm_docs):
    path = _lm_recipe(tmp_path, lm_docs)
    report = compress.run(path, output=tmp_path / "out", quiet=True)
    assert report["task"] == "lm"
    assert [(m["name"], m["role"]) for m in report["models"]] == [
        ("teacher", "teacher"), ("01_distill", "stage"), ("02_export", "stage"), ("final", "final")]
    on_disk = json.loads((tmp_path / "out" / "api" / "report.json").read_text())
    assert on_disk["models"] == report["models"]
    assert (tmp_path / "out" / "api" / "model.onnx").read_bytes() == (tmp_path / "out" / "api" / "stages" /
                                                                      "02_export.onnx").read_bytes()


def test_validate_still_runs_the_vision_pipeline(tmp_path):
    import yaml

    from tests.conftest import MINIMAL_RECIPE

    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL_RECIPE, "data": {"source": "digits"}}))
    lines = compress.validate(path, output=tmp_path / "out")
    assert lines[0] == f"output: {tmp_path / 'out' / 'unit'}"
    assert any(line.startswith("teacher: ") and "MACs" in line for line in lines)
