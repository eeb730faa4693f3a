"""The bad-input corpus (tests/bad_inputs/): each case fails before any compute, with its exact
message, a non-zero exit code, and nothing left in the output folder."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from compress.cli import cli
from compress.models import search_path

CORPUS = Path(__file__).parent / "bad_inputs"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "recipe.yaml").exists())


@pytest.fixture(autouse=True)
def _no_bytecode_in_the_corpus(monkeypatch):
    """The factory cases import their case folder's module (as bad_inputs.<case>.nets): leave no __pycache__ there."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 79  # 56 before issue 14, 23 from it


def _invoke(command: str, case: str, out: Path):
    folder = CORPUS / case
    args = (folder / "args.txt").read_text().strip().replace("{dir}", str(folder)).split() if (folder / "args.txt").exists() else []
    if "--output" not in args:
        args += ["--output", str(out)]
    result = CliRunner().invoke(cli, [command, str(folder / "recipe.yaml"), *args])
    expected = "error: " + (folder / "expected.txt").read_text().rstrip("\n").replace("{dir}", str(folder)).replace(
        "{syspath}", search_path())  # a missing factory module's message lists this process's sys.path
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


# Cases that cost memory or time without their limit. Each runs once more in a fresh process under an
# address-space limit: `compress validate` maps ~0.8 GiB (torch's import) and, with the limits, fails at once
# with its message. Measured on the code before issue 14 under the same limit: the alias bomb ran 15 s into
# MemoryError, label 10**9 6 s (set(range(10**9))), the 10000 x 10000 PNG and the 8000 x 8000 folder died
# allocating float32 arrays, the bzip2 npz could not allocate its 3 GiB; the forged 9 GiB member crashed np.memmap.
RESOURCE_CASES = ["yaml_alias_bomb", "labels_one_billion", "npz_bzip2_bomb", "npz_member_over_budget",
                  "image_above_the_pixel_budget", "image_folder_above_the_memory_budget"]
MEMORY_LIMIT = 2 << 30  # bytes of address space (RLIMIT_AS)


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


@pytest.mark.parametrize("case", RESOURCE_CASES)
def test_resource_cases_fail_with_their_message_under_a_memory_limit(case, tmp_path):
    folder = CORPUS / case
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(CORPUS.parent.parent), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "compress", "validate", str(folder / "recipe.yaml"), "--output", str(out)],
                          preexec_fn=_limit_memory, capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=600)  # a guard against a hang, not a speed assertion
    took = time.perf_counter() - start
    print(f"{case}: exit {proc.returncode} in {took:.1f} s under RLIMIT_AS {MEMORY_LIMIT >> 30} GiB")
    expected = "error: " + (folder / "expected.txt").read_text().rstrip("\n").replace("{dir}", str(folder))
    assert (proc.returncode, proc.stderr.strip()) == (2, expected)
    assert not out.exists()
