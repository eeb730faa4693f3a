"""Recipe errors: each names the file, the line, the key path and the valid choices, before any compute."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from compress.errors import ChainError, RecipeError
from compress.recipe import load_recipe, parse_recipe

GOOD = """\
name: digits
seed: 0
data:
  source: digits
  split: {val: 0.2, test: 0.2}
teacher:
  model: {arch: cnn, width: 64, depth: 3}
  train: {epochs: 30, lr: 0.001}
student:
  model: {arch: cnn, width: 16, depth: 2}
stages:
  - {type: distill, temperature: 4, alpha: 0.5, epochs: 30}
  - {type: prune, ratio: 0.3, importance: l2}
  - {type: finetune, epochs: 10, distill: true}
  - {type: export, format: onnx}
  - {type: quantize, mode: int8_static, calibration: {method: minmax, samples: 256}}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    return str(info.value).replace(str(path), "recipe.yaml")


def test_the_issue_recipe_loads_with_every_key(tmp_path):
    r = load_recipe(write(tmp_path, GOOD))
    assert [s.type for s in r.stages] == ["distill", "prune", "finetune", "export", "quantize"]
    assert r.stages[0].temperature == 4 and r.stages[0].alpha == 0.5 and r.stages[0].epochs == 30
    assert r.stages[1].ratio == 0.3 and r.stages[1].importance == "l2"
    assert r.stages[2].distill is True
    assert r.stages[4].calibration.method == "minmax" and r.stages[4].calibration.samples == 256
    assert r.teacher.train.epochs == 30 and r.teacher.train.lr == 0.001
    assert r.data.split.val == 0.2


def test_shipped_recipes_are_valid():
    for path in sorted(Path(__file__).parents[1].joinpath("recipes").glob("*.yaml")):
        load_recipe(path)


def test_configs_are_frozen(tmp_path):
    r = load_recipe(write(tmp_path, GOOD))
    with pytest.raises(Exception):
        r.stages[0].temperature = 2.0  # type: ignore[misc]


@pytest.mark.parametrize("text, expected", [
    (GOOD.replace("teacher:", "teachr:"),
     "recipe.yaml:6: teachr: unknown key 'teachr'; did you mean 'teacher'? valid keys: task, name, seed, baseline, "
     "output, data, teacher, student, stages, bench\n  also: recipe.yaml:1: teacher: required key is missing"),
    (GOOD.replace("importance: l2", "importance: l3"),
     "recipe.yaml:13: stages[1].importance: invalid value 'l3'; valid choices: l1, l2, taylor, bn_scale"),
    (GOOD.replace("width: 64", "width: wide"),
     "recipe.yaml:7: teacher.model.width: Input should be a valid integer, unable to parse string as an integer (got 'wide')"),
    (GOOD.replace("type: distill,", "type: distil,"),
     "recipe.yaml:12: stages[0].type: unknown stage type 'distil'; did you mean 'distill'? valid choices: "
     "distill, export, finetune, prune, qat, quantize, train"),
    (GOOD.replace("ratio: 0.3", "ratio: 1.5"),
     "recipe.yaml:13: stages[1].ratio: Input should be less than 1 (got 1.5)"),
    (GOOD.replace("temperature: 4", "temperature: 0"),
     "recipe.yaml:12: stages[0].temperature: Input should be greater than 0 (got 0)"),
    (GOOD.replace("samples: 256", "sample: 256"),
     "recipe.yaml:16: stages[4].calibration.sample: unknown key 'sample'; did you mean 'samples'? "
     "valid keys: method, samples, batch_size"),
    (GOOD.replace("method: minmax", "method: kl"),
     "recipe.yaml:16: stages[4].calibration.method: invalid value 'kl'; valid choices: minmax, entropy, percentile"),
    (GOOD.replace("source: digits", "source: mnist"),
     "recipe.yaml:4: data.source: invalid value 'mnist'; did you mean 'mnist1d'? valid choices: digits, mnist1d, npz, "
     "imagefolder, stdlib-text, text"),
    (GOOD.replace("source: digits", "source: stdlib-text\n  path: code/"),
     "recipe.yaml:3: data: source 'stdlib-text' is built in and takes no path"),
    (GOOD.replace("source: digits", "source: text"),
     "recipe.yaml:3: data: source 'text' needs a path"),
    (GOOD.replace("source: digits", "source: digits\n  length: 64"),
     "recipe.yaml:3: data: 'length' is a key of the text sources (stdlib-text, text), not of source 'digits'"),
    (GOOD.replace("source: digits", "source: stdlib-text\n  length: 4"),
     "recipe.yaml:5: data.length: Input should be greater than or equal to 8 (got 4)"),
    (GOOD.replace("{arch: cnn, width: 16, depth: 2}", "{arch: text_transformer, width: 30}"),
     "recipe.yaml:10: student.model: arch 'text_transformer': width 30 must be a multiple of heads 4"),
    (GOOD.replace("source: digits", "source: npz"),
     "recipe.yaml:3: data: source 'npz' needs a path"),
    (GOOD.replace("{val: 0.2, test: 0.2}", "{val: 0.5, test: 0.5}"),
     "recipe.yaml:5: data.split: val + test must leave data for training (got 0.5 + 0.5 >= 1)"),
    (GOOD.replace("{arch: cnn, width: 16, depth: 2}", "{width: 16}"),
     "recipe.yaml:10: student.model: give exactly one of 'arch' (built-in: mlp, cnn, transformer, text_transformer) or "
     "'factory' ('package.module:function')"),
    (GOOD.replace("name: digits", "name: ../evil"),
     "recipe.yaml:1: name: String should match pattern '^[A-Za-z0-9][A-Za-z0-9._-]*$' (got '../evil')"),
    (GOOD.replace("  - {type: prune, ratio: 0.3, importance: l2}\n", "").replace(
        "  - {type: quantize", "  - {type: prune, ratio: 0.3}\n  - {type: quantize"),
     "recipe.yaml:15: stages[3]: stage 'prune' cannot follow stage 'export' (stages[2]): 'prune' takes torch models "
     "but stage 'export' (stages[2]) produces onnx models; put 'prune' before it"),
    (GOOD.replace("  - {type: distill, temperature: 4, alpha: 0.5, epochs: 30}\n", "").replace(
        "  - {type: prune", "  - {type: quantize}\n  - {type: prune"),
     "recipe.yaml:12: stages[0]: stage 'quantize' cannot follow the student model: 'quantize' takes onnx models "
     "but the student model produces torch models; put 'quantize' after an export or qat stage"),
])
def test_bad_recipe_message(tmp_path, text, expected):
    assert error_of(tmp_path, text) == expected


def test_chain_error_is_a_recipe_error(tmp_path):
    path = write(tmp_path, GOOD.replace("  - {type: quantize", "  - {type: finetune}\n  - {type: quantize"))
    with pytest.raises(ChainError):
        load_recipe(path)


def test_python_yaml_tags_are_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    text = GOOD.replace("{arch: cnn, width: 64, depth: 3}", f'!!python/object/apply:os.system ["touch {marker}"]')
    msg = error_of(tmp_path, text)
    assert msg.startswith("recipe.yaml:7: YAML tags that run code are refused")
    assert not marker.exists()


@pytest.mark.parametrize("text, expected", [
    ("", "recipe.yaml: recipe is empty"),
    ("- a\n- b\n", "recipe.yaml:1: a recipe is a YAML mapping of keys (got list)"),
    ("name: [unclosed\n", "recipe.yaml:2: expected ',' or ']', but got '<stream end>'"),
])
def test_unparseable_recipes(tmp_path, text, expected):
    assert error_of(tmp_path, text) == expected


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_relative_paths_resolve_against_the_recipe(tmp_path):
    r = load_recipe(write(tmp_path, GOOD.replace("source: digits", "source: npz\n  path: data/x.npz")))
    assert r.data.path == tmp_path / "data" / "x.npz"


def test_parse_recipe_without_a_file_has_no_line():
    with pytest.raises(RecipeError) as info:
        parse_recipe({"name": "x", "teacher": {"model": {"arch": "cnn"}}, "student": {"model": {"arch": "cnn"}},
                      "stages": [{"type": "prune"}]})
    assert str(info.value) == ("stages[0]: give 'ratio' (fraction of channels to remove, e.g. 0.3) or "
                               "'target' (e.g. {macs: 0.25} or {latency_ms: 0.05})")


def test_global_is_accepted_as_prune_key(tmp_path):
    r = load_recipe(write(tmp_path, GOOD.replace("importance: l2", "importance: l2, global: true")))
    assert r.stages[1].global_pruning is True


def test_from_teacher_keeps_the_text_transformers_patch(tmp_path):
    """A derived student reads its input as the teacher does (patch is tokenisation, not size); heads default."""
    text = GOOD.replace("source: digits", "source: stdlib-text").replace(
        "{arch: cnn, width: 64, depth: 3}", "{arch: text_transformer, width: 64, depth: 2, patch: 4}").replace(
        "model: {arch: cnn, width: 16, depth: 2}", "from_teacher: {width: 0.5}")
    student = load_recipe(write(tmp_path, text)).student.model
    assert (student.arch, student.width, student.depth, student.patch, student.heads) == ("text_transformer", 32, 2, 4, None)


@pytest.mark.parametrize("name", ["digits.yaml", "text-classifier.yaml"])
def test_a_dumped_recipe_parses_again_to_the_same_recipe(name):
    # compress search re-validates variants from a dump: defaults must not turn into keys the source refuses
    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / name)
    again = parse_recipe(recipe.model_dump(mode="json", by_alias=True, exclude={"source_file"}))
    assert again.model_dump() == recipe.model_dump()
    text = recipe.data.source == "stdlib-text"
    assert (recipe.data.length, recipe.data.snippets_per_class) == ((256, 800) if text else (None, None))


@pytest.mark.parametrize("task", [{"kind": "lm"}, ["lm"], 3])
def test_a_task_that_is_not_a_name_is_named_with_the_choices(task):
    with pytest.raises(RecipeError) as err:
        parse_recipe({"task": task, "name": "x"}, "r.yaml", {("task",): 2})
    assert str(err.value) == f"r.yaml:2: task: invalid value {task!r}; valid choices: classify, lm"
