"""The bad-input corpus (tests/bad_inputs/): each case fails before any compute, with its exact
message, a non-zero exit code, and nothing left in the output folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from compress.cli import cli

CORPUS = Path(__file__).parent / "bad_inputs"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "recipe.yaml").exists())


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 30


def _invoke(command: str, case: str, out: Path):
    folder = CORPUS / case
    args = (folder / "args.txt").read_text().strip().replace("{dir}", str(folder)).split() if (folder / "args.txt").exists() else []
    if "--output" not in args:
        args += ["--output", str(out)]
    result = CliRunner().invoke(cli, [command, str(folder / "recipe.yaml"), *args])
    expected = "error: " + (folder / "expected.txt").read_text().rstrip("\n").replace("{dir}", str(folder))
    return result, expected


@pytest.mark.parametrize("case", CASES)
def test_validate_rejects(case, tmp_path):
    result, expected = _invoke("validate", case, tmp_path / "out")
    assert result.exit_code != 0
    assert result.output.strip() == expected
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", CASES)
def test_run_rejects_before_compute(case, tmp_path):
    result, expected = _invoke("run", case, tmp_path / "out")
    assert result.exit_code != 0
    assert result.output.strip() == expected
    assert not (tmp_path / "out").exists(), "a failed run left output behind"
    assert not (CORPUS / case / "PWNED").exists() and not Path("PWNED").exists()
