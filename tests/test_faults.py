"""The fault suite of the pipeline and its cache: what rots or is planted on disk is never served or followed.

One clean run of the tiny recipe is the reference. Each case copies its output root (run folder and
``.cache``), damages one thing, reruns the same recipe and asserts the exact outcome: either the damaged
entry is recomputed with a warning naming it, and the model files' sha256 and test accuracies equal the
clean run's (latency excluded: it is timed), or the run fails with a non-zero exit naming the culprit
and the previous run's files are byte-identical. (The gate's own faults are in tests/test_check.py.)
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import onnx
import pytest
import yaml
from click.testing import CliRunner

from compress.cli import cli
from compress.pipeline import run
from compress.recipe import parse_recipe

NAME = "tiny"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def outcome(report: dict) -> list[tuple]:
    """What must not change: every model's name, file digest and test accuracy."""
    return [(m["name"], m["sha256"], m["accuracy"], m["errors"]) for m in report["models"]]


def files(run_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def clean(tmp_path_factory, tiny_recipe_template):
    root = tmp_path_factory.mktemp("clean")
    recipe = copy.deepcopy(tiny_recipe_template)
    report = run(parse_recipe(recipe), output=root / "out", quiet=True)
    return {"recipe": recipe, "root": root / "out", "report": report}


@pytest.fixture
def copy_of(clean, tmp_path):
    root = tmp_path / "out"
    shutil.copytree(clean["root"], root, symlinks=True)
    return root


def entries(root: Path, kind: str) -> list[Path]:
    return sorted(p for p in (root / ".cache" / kind).iterdir() if not p.name.startswith("."))


def stage_entry(root: Path, stage_type: str) -> Path:
    """The cache entry of the (single) stage of this type."""
    for e in entries(root, "stages"):
        meta = json.loads((e / "manifest.json").read_text())["meta"]
        if meta["name"] == stage_type:
            return e
    raise LookupError(stage_type)


def rerun(clean, root: Path) -> dict:
    return run(parse_recipe(copy.deepcopy(clean["recipe"])), output=root, quiet=True)


def assert_recomputed(clean, root: Path, entry: Path, report: dict) -> None:
    kind, key = entry.parent.name, entry.name
    assert outcome(report) == outcome(clean["report"])
    assert any(f"cache entry {kind}/{key}" in w and "recomputing it" in w for w in report["warnings"]), report["warnings"]
    assert any(p.name.startswith(f"{kind}.{key}.") for p in (root / ".cache" / "quarantine").iterdir())
    assert (entry / "manifest.json").exists()  # stored again, whole
    for m in report["models"]:
        assert _sha(Path(m["path"])) == m["sha256"]


def _negate_half_the_weights(path: Path) -> None:
    """Still a valid ONNX protobuf: the initializers' first half negated."""
    model = onnx.load(str(path))
    for init in model.graph.initializer[: max(1, len(model.graph.initializer) // 2)]:
        arr = onnx.numpy_helper.to_array(init)
        if arr.dtype.kind == "f":
            init.CopyFrom(onnx.numpy_helper.from_array(-arr, init.name))
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))


def test_a_stage_file_rotted_in_place_is_recomputed(clean, copy_of):
    entry = stage_entry(copy_of, "quantize")
    _negate_half_the_weights(entry / "model.onnx")
    report = rerun(clean, copy_of)
    assert_recomputed(clean, copy_of, entry, report)
    assert [s["cached"] for s in report["stages"]] == [True, True, True, True, False]


@pytest.mark.parametrize("kind", ["weights", "stages"])
def test_a_flipped_safetensors_is_recomputed(clean, copy_of, kind):
    entry = entries(copy_of, "weights")[0] if kind == "weights" else stage_entry(copy_of, "distill")
    blob = bytearray((entry / "model.safetensors").read_bytes())
    blob[-7] ^= 0x40  # a byte of tensor data near the end: still a loadable file
    (entry / "model.safetensors").write_bytes(bytes(blob))
    report = rerun(clean, copy_of)
    assert_recomputed(clean, copy_of, entry, report)


@pytest.mark.parametrize("damage", ["truncated_manifest", "half_deleted", "no_manifest"])
def test_a_broken_entry_is_recomputed_without_a_traceback(clean, copy_of, damage):
    entry = stage_entry(copy_of, "export")
    if damage == "truncated_manifest":
        text = (entry / "manifest.json").read_text()
        (entry / "manifest.json").write_text(text[: len(text) // 2])
    elif damage == "half_deleted":
        (entry / "model.onnx").unlink()
    else:
        (entry / "manifest.json").unlink()
    report = rerun(clean, copy_of)
    assert_recomputed(clean, copy_of, entry, report)


@pytest.mark.parametrize("name", ["/tmp/compress-escaped", "../../../escaped"])
def test_a_crafted_file_name_in_the_metadata_decides_nothing(clean, copy_of, tmp_path, name):
    entry = stage_entry(copy_of, "quantize")
    man = json.loads((entry / "manifest.json").read_text())
    man["meta"]["stems"] = {fmt: name for fmt in man["meta"]["stems"]}
    (entry / "manifest.json").write_text(json.dumps(man))
    report = rerun(clean, copy_of)
    assert_recomputed(clean, copy_of, entry, report)
    assert not list(tmp_path.rglob("*escaped*")) and not Path("/tmp/compress-escaped.onnx").exists()


def test_a_symlinked_lock_is_refused_and_its_target_kept(clean, copy_of, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    lock = copy_of / NAME / ".lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(victim)
    before = files(copy_of / NAME)
    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(yaml.safe_dump(clean["recipe"]))
    r = CliRunner().invoke(cli, ["run", str(recipe_file), "--output", str(copy_of), "--quiet"])
    assert r.exit_code == 2 and f"refusing to write through {lock}: it is a symlink inside the output folder" in r.output
    assert victim.read_text() == "precious" and files(copy_of / NAME) == before


def test_a_symlinked_cache_lock_is_refused_and_its_target_kept(clean, copy_of, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    entry = stage_entry(copy_of, "quantize")
    shutil.rmtree(entry)  # the stage must be computed, so its key is claimed
    lock = copy_of / ".cache" / "locks" / f"stages.{entry.name}.lock"
    lock.parent.mkdir(exist_ok=True)
    lock.unlink(missing_ok=True)
    lock.symlink_to(victim)
    before = files(copy_of / NAME)
    with pytest.raises(Exception, match="is a symlink; refusing to use it") as err:
        rerun(clean, copy_of)
    assert getattr(err.value, "exit_code", None) == 2
    assert victim.read_text() == "precious" and files(copy_of / NAME) == before


@pytest.mark.parametrize("planted", [".cache", f"{NAME}/stages", NAME])
def test_a_symlink_planted_inside_the_output_root_is_refused_before_compute(clean, copy_of, tmp_path, planted):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = copy_of / planted
    shutil.move(str(target), str(elsewhere / "moved"))
    target.symlink_to(elsewhere / "moved")
    snapshot = {p: p.read_bytes() for p in sorted(elsewhere.rglob("*")) if p.is_file()}
    with pytest.raises(Exception, match="symlink inside the output folder") as err:
        rerun(clean, copy_of)
    assert getattr(err.value, "exit_code", None) == 2
    assert {p: p.read_bytes() for p in sorted(elsewhere.rglob("*")) if p.is_file()} == snapshot


def test_a_symlinked_output_root_made_by_the_user_is_fine(clean, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    report = run(parse_recipe(copy.deepcopy(clean["recipe"])), output=tmp_path / "alias", quiet=True)
    assert outcome(report) == outcome(clean["report"]) and (real / NAME / "report.json").is_file()


def test_a_failing_run_keeps_the_previous_outputs(clean, copy_of):
    before = files(copy_of / NAME)
    failing = copy.deepcopy(clean["recipe"])
    failing["stages"][3] = {**failing["stages"][3], "tolerance": 1e-30}  # export's parity check cannot pass
    with pytest.raises(Exception, match="stage 4 \\(export\\): export: onnxruntime's logits differ"):
        run(parse_recipe(failing), output=copy_of, quiet=True)
    assert files(copy_of / NAME) == before
    assert not [p for p in (copy_of / NAME).iterdir() if p.name.startswith(".partial-")]  # staging removed


def test_a_run_interrupted_before_publishing_leaves_the_old_run_whole(clean, copy_of, monkeypatch):
    """Outputs are replaced only once complete: a run stopped after building its files, before publishing them."""
    import compress.pipeline as pipeline_mod

    before = files(copy_of / NAME)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline_mod, "measure", boom)  # after every file is built, before publishing
    with pytest.raises(KeyboardInterrupt):
        rerun(clean, copy_of)
    assert files(copy_of / NAME) == before
