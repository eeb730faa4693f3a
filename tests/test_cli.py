"""The command line: help, version, validate, run and the `compress RECIPE` shorthand."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from compress.cli import cli


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def in_repo(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    return repo_root


def write_recipe(path, data):
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_help(runner):
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    assert "validate" in result.output and "run" in result.output
    assert runner.invoke(cli, ["-h"]).exit_code == 0


def test_version(runner):
    import compress

    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and compress.__version__ in result.output


def test_validate_the_shipped_recipe(runner, in_repo):
    result = runner.invoke(cli, ["validate", "recipes/digits.yaml"])
    assert result.exit_code == 0, result.output
    assert "recipes/digits.yaml: valid" in result.output
    assert "1079 train / 359 val / 359 test samples" in result.output
    assert "teacher: cnn(width=64, depth=3)" in result.output
    assert "stage 5: quantize (onnx -> onnx)" in result.output


def test_validate_unknown_key(runner, tmp_path, tiny_recipe):
    tiny_recipe["teacher"]["train"]["epochz"] = 3
    path = write_recipe(tmp_path / "typo.yaml", tiny_recipe)
    result = runner.invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert str(path) in result.output
    assert "epochz" in result.output
    assert "did you mean 'epochs'?" in result.output
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "epochz" in text)
    assert f"{path}:{line}: teacher.train.epochz: unknown key 'epochz'" in result.output
    assert ": valid" not in result.output


def test_validate_missing_file(runner, tmp_path):
    result = runner.invoke(cli, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "recipe file not found" in result.output


def test_run_with_a_bad_recipe_exits_2_before_compute(runner, tmp_path, tiny_recipe):
    tiny_recipe["stages"] = [{"type": "quantize"}, {"type": "distill"}]  # quantize takes onnx, not torch
    path = write_recipe(tmp_path / "chain.yaml", tiny_recipe)
    result = runner.invoke(cli, ["run", str(path), "--output", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 2, result.output
    assert "quantize" in result.output and "cannot follow" in result.output
    assert not (tmp_path / "out").exists()


def test_shorthand_calls_run_with_the_same_arguments(runner, tmp_path, tiny_recipe, monkeypatch):
    import compress.pipeline

    calls = []
    monkeypatch.setattr(compress.pipeline, "run",
                        lambda recipe, output=None, quiet=False, force=False: calls.append((recipe, output, quiet, force)))
    path = write_recipe(tmp_path / "tiny.yaml", tiny_recipe)
    args = [str(path), "--output", str(tmp_path), "-q", "--force"]
    assert runner.invoke(cli, ["run", *args]).exit_code == 0
    assert runner.invoke(cli, args).exit_code == 0
    assert len(calls) == 2 and calls[0] == calls[1]
    recipe, output, quiet, force = calls[0]
    assert recipe.name == "tiny" and output == str(tmp_path) and quiet is True and force is True


def test_shorthand_runs_the_recipe(runner, tmp_path, tiny_recipe):
    path = write_recipe(tmp_path / "tiny.yaml", tiny_recipe)
    out = tmp_path / "out"
    result = runner.invoke(cli, [str(path), "--output", str(out), "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "tiny" / "report.json").read_text())
    assert [m["role"] for m in report["models"]] == ["teacher", "scratch"] + ["stage"] * 5 + ["final"]
    for name in ("report.md", "report.png", "model.onnx", "model.ort"):
        assert (out / "tiny" / name).is_file()


def test_python_dash_m(repo_root):
    proc = subprocess.run([sys.executable, "-m", "compress", "--help"], capture_output=True, text=True, cwd=repo_root,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "validate" in proc.stdout
