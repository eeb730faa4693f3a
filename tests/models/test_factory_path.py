"""``factory:`` resolves like a user expects (issue 15, item 4): a module beside the recipe is importable without
PYTHONPATH (the recipe's folder is searched first, only while the factory is imported and called); an import
error names the module, the recipe's folder and sys.path; sys.path is left as it was."""

from __future__ import annotations

import sys
import uuid

import pytest
from click.testing import CliRunner

from compress.cli import cli
from compress.errors import ModelError
from compress.models import _FROM_RECIPE, build_model, factory_base, search_path
from compress.models.spec import ModelSpec
from compress.recipe import load_recipe

NET = '''
from torch import nn


def make(hidden=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


TAG = {tag!r}
'''

RECIPE = """\
name: beside
data: {{source: digits}}
teacher:
  model: {{arch: cnn, width: 4, depth: 1}}
student:
  model: {{factory: "{module}:make", kwargs: {{hidden: 6}}}}
stages:
  - {{type: distill, epochs: 1, chain: [{{factory: "{module}:make"}}]}}
"""


@pytest.fixture
def module(monkeypatch):
    """A module name no other test uses; forgotten by sys.modules and compress afterwards."""
    name = f"mynets_{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    yield name
    sys.modules.pop(name, None)
    _FROM_RECIPE.pop(name, None)


def write(folder, module, tag="a", factory_module=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(NET.format(tag=tag))
    (folder / "recipe.yaml").write_text(RECIPE.format(module=factory_module or module))
    return folder / "recipe.yaml"


def test_a_module_beside_the_recipe_resolves_in_compress_validate(tmp_path, module, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # not the recipe's folder: only the recipe's location makes it importable
    recipe = write(tmp_path / "project", module)
    before = list(sys.path)
    result = CliRunner().invoke(cli, ["validate", str(recipe), "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert f"student: {module}:make(hidden=6)" in result.output
    assert sys.path == before  # the folder was on sys.path only while the factories were imported and called


def test_every_factory_of_the_recipe_knows_the_recipe_folder(tmp_path, module):
    recipe = load_recipe(write(tmp_path, module))
    assert factory_base(recipe.student.model) == tmp_path
    assert factory_base(recipe.stages[0].chain[0]) == tmp_path  # chain steps (and ensemble members) too
    assert factory_base(recipe.teacher.model) is None  # a built-in model has no module
    assert "factory_base" not in str(recipe.model_dump()) and "_factory_base" not in recipe.student.model.model_dump()


def test_a_missing_module_names_the_folder_searched_and_sys_path(tmp_path, module):
    recipe = write(tmp_path, module, factory_module="no_such_module_here")
    before = list(sys.path)
    result = CliRunner().invoke(cli, ["validate", str(recipe), "--output", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert result.output.strip() == (
        f"error: {recipe}:6: student.model: factory 'no_such_module_here:make': cannot import module "
        f"'no_such_module_here' (No module named 'no_such_module_here'); searched the recipe's folder {tmp_path}, "
        f"then sys.path: {search_path()}")
    assert sys.path == before


def test_without_a_recipe_file_only_sys_path_is_searched(tmp_path, module):
    write(tmp_path, module)
    with pytest.raises(ModelError) as info:
        build_model(ModelSpec(factory=f"{module}:make"), (1, 8, 8), 10)
    assert str(info.value).endswith(f"(No module named '{module}'); searched sys.path: {search_path()}")
    assert len(build_model(ModelSpec(factory=f"{module}:make"), (1, 8, 8), 10, base=tmp_path)) == 4  # explicit base


def test_two_recipe_folders_each_get_their_own_module(tmp_path, module):
    a = load_recipe(write(tmp_path / "a", module, tag="a"))
    b = load_recipe(write(tmp_path / "b", module, tag="b"))
    build_model(a.student.model, (1, 8, 8), 10)
    assert sys.modules[module].TAG == "a"
    build_model(b.student.model, (1, 8, 8), 10)
    assert sys.modules[module].TAG == "b"


def test_a_module_imported_from_elsewhere_is_not_silently_used(tmp_path, module, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere, module, tag="elsewhere")
    monkeypatch.syspath_prepend(str(elsewhere))
    __import__(module)  # the user's process imported another module of that name first
    recipe = load_recipe(write(tmp_path / "project", module))
    with pytest.raises(ModelError, match=rf"module '{module}' is already imported from {elsewhere.resolve()}/{module}.py, so "
                                         rf"{tmp_path}/project/{module}.py beside the recipe cannot be imported"):
        build_model(recipe.student.model, (1, 8, 8), 10)
