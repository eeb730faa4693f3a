"""``compress search``: the frontier against a hand-worked example, a tiny grid (outputs, cache reuse, one
measurement session), the budget, TPE, and bad input named before any compute."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import sys

import pytest
import yaml
from click.testing import CliRunner

from compress.cli import cli
from compress.errors import CompressError
from compress.pipeline import chain_keys, prepare
from compress.recipe import parse_recipe
from compress.search import Point, SearchError, dominates, pareto, parse_axes, search, variant
from compress.stages import STAGES

from conftest import TINY_RECIPE

RECIPE = {**copy.deepcopy(TINY_RECIPE), "name": "srch"}
RECIPE["stages"][3] = {"type": "export", "format": ["onnx"]}  # no .ort conversion: the search is under test
AXES = {"ratios": ["0.3,0.5"], "modes": ["int8_static", "int8_dynamic"]}  # 2 x 2; r0.3-int8_static is the recipe


# --- the frontier, worked by hand ------------------------------------------------------------------


def test_pareto_against_a_hand_worked_example():
    #        accuracy, latency, size
    pts = [(0.90, 1.00, 100),  # A: frontier (only G is more accurate, and G is slower and bigger)
           (0.85, 0.50, 100),  # B: frontier (faster than A)
           (0.85, 0.60, 100),  # C: dominated by B (same accuracy and size, slower)
           (0.80, 0.40, 50),   # D: frontier (fastest and smallest)
           (0.90, 1.00, 100),  # E: A's twin: equal points do not dominate each other
           (0.70, 0.45, 60),   # F: dominated by D (less accurate, slower, bigger)
           (0.95, 2.00, 200),  # G: frontier (most accurate)
           (0.80, 0.40, 51)]   # H: dominated by D by size alone
    assert pareto(pts) == [True, True, False, True, True, False, True, False]
    assert dominates(pts[1], pts[2]) and not dominates(pts[2], pts[1])
    assert not dominates(pts[0], pts[4]) and not dominates(pts[4], pts[0])
    assert dominates(pts[3], pts[7])
    assert pareto([]) == [] and pareto([(0.5, 1.0, 1)]) == [True]


# --- variants ---------------------------------------------------------------------------------------


def test_variant_at_the_recipes_own_point_is_the_recipe():
    recipe = parse_recipe(RECIPE)
    prep = prepare(recipe)
    own = variant(recipe, Point(0.3, "int8_static", 4))
    assert chain_keys(own, prep) == chain_keys(recipe, prep)  # so search and `compress run` share every cache entry
    other = chain_keys(variant(recipe, Point(0.5, "int8_static", 4)), prep)
    assert other[0] == chain_keys(recipe, prep)[0] and other[1] != chain_keys(recipe, prep)[1]  # same distill


def test_variant_ratio_zero_and_fp32_drop_their_stages_and_a_missing_quantize_is_appended():
    recipe = parse_recipe(RECIPE)
    assert [s.type for s in variant(recipe, Point(0.0, "fp32", 4)).stages] == ["distill", "finetune", "export"]
    no_quant = parse_recipe({**RECIPE, "stages": RECIPE["stages"][:4]})
    v = variant(no_quant, Point(0.5, "int8_dynamic", 4))
    assert [(s.type, getattr(s, "mode", None)) for s in v.stages][-1] == ("quantize", "int8_dynamic")
    assert v.stages[1].ratio == 0.5
    wide = variant(recipe, Point(0.3, "int8_static", 12))
    assert wide.student.model.width == 12 and wide.teacher == recipe.teacher


# --- bad input, before any compute ----------------------------------------------------------------


def test_unknown_mode_names_the_valid_choices():
    with pytest.raises(SearchError) as err:
        parse_axes(parse_recipe(RECIPE), modes=["int8_static,int9_static"])
    assert str(err.value) == ("--modes: unknown mode 'int9_static'; did you mean 'int8_static'? valid choices: "
                              "fp32, int8_static, int8_dynamic, int4_weight_only, mixed, auto")
    assert err.value.exit_code == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"ratios": ["1.0"]}, "--ratios: 1.0 is out of range; a ratio is in [0, 1) (0 = no prune stage)"),
    ({"ratios": ["abc"]}, "--ratios: 'abc' is not a number"),
    ({"widths": ["0"]}, "--widths: 0 is out of range; a student width is 1 to 4096"),
])
def test_bad_axis_values(kwargs, message):
    with pytest.raises(SearchError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        parse_axes(parse_recipe(RECIPE), **kwargs)


def test_ratios_without_a_prune_stage_point_at_the_recipe(tmp_path):
    path = tmp_path / "noprune.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "stages": [s for s in RECIPE["stages"] if s["type"] != "prune"]}))
    result = CliRunner().invoke(cli, ["search", str(path), "-o", str(tmp_path / "out"), "--ratios", "0.2"])
    assert result.exit_code == 2
    assert f"{path}:" in result.output and "stages: --ratios: the recipe has no prune stage" in result.output
    assert not (tmp_path / "out").exists()  # nothing computed, nothing written


def test_cli_unknown_mode_exits_2_before_any_compute(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    result = CliRunner().invoke(cli, ["search", str(path), "-o", str(tmp_path / "out"), "--modes", "int3"])
    assert result.exit_code == 2
    assert "valid choices: fp32, int8_static, int8_dynamic, int4_weight_only" in result.output
    assert not (tmp_path / "out").exists()


def test_tpe_without_optuna_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    with pytest.raises(CompressError, match=r"needs the optional package 'optuna': pip install 'compress\[search\]'"):
        search(parse_recipe(RECIPE), tmp_path, method="tpe", quiet=True, **AXES)
    assert not (tmp_path / "srch").exists()


# --- a tiny grid ----------------------------------------------------------------------------------


class Spy:
    """Counts distill runs and records every measurement session (the models timed together)."""

    def __init__(self, mp):
        import compress.pipeline as pipeline

        self.distills, self.sessions = 0, []
        spec, evaluate = STAGES["distill"], pipeline.evaluate

        def distill(art, cfg, ctx):
            self.distills += 1
            return spec.fn(art, cfg, ctx)

        def measure(models, *a, **k):
            self.sessions.append([m["name"] for m in models])
            return evaluate(models, *a, **k)

        mp.setitem(STAGES, "distill", dataclasses.replace(spec, fn=distill))
        mp.setattr(pipeline, "evaluate", measure)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A cold search, then the same search again (warm), into one output root."""
    root = tmp_path_factory.mktemp("search")
    out = {}
    for run in ("cold", "warm"):
        with pytest.MonkeyPatch.context() as mp:
            spy = Spy(mp)
            result = search(parse_recipe(RECIPE), root, quiet=True, budget=3600, **AXES)
        out[run] = (result, spy)
    return root, out


def test_grid_writes_every_candidate_and_the_frontier(grid, splits):
    root, runs = grid
    result, _ = runs["cold"]
    folder = root / "srch" / "search"
    assert json.loads((folder / "search.json").read_text())["candidates"] == runs["warm"][0]["candidates"]  # the last
    assert (folder / "search.png").read_bytes()[:4] == b"\x89PNG"
    md = (folder / "search.md").read_text()
    names = [c["name"] for c in result["candidates"]]
    assert sorted(names) == ["r0.3-int8_dynamic-w4", "r0.3-int8_static-w4", "r0.5-int8_dynamic-w4", "r0.5-int8_static-w4"]
    assert all(f"| {n} |" in md for n in names + ["teacher", "scratch"])
    assert [c["name"] for c in result["candidates"] if c["recipe"]] == ["r0.3-int8_static-w4"]
    assert [r["role"] for r in result["references"]] == ["teacher", "scratch"]
    assert result["variants_run"] == result["variants_planned"] == 4 and not result["stopped_by_budget"]
    # The flags are the frontier of the reported numbers; a dominated one names a candidate that dominates it.
    pts = {c["name"]: (c["accuracy"], c["latency_ms"]["p50"], c["size_bytes"]) for c in result["candidates"]}
    assert [c["frontier"] for c in result["candidates"]] == pareto(list(pts.values()))
    assert result["frontier"] == [c["name"] for c in result["candidates"] if c["frontier"]] != []
    for c in result["candidates"]:
        assert c["frontier"] or dominates(pts[c["dominated_by"]], pts[c["name"]])
    # Accuracy is the file's, on the test split.
    from compress.runtimes.onnxruntime import load

    for c in result["candidates"]:
        pred = load(c["path"]).predict(splits.test.x).argmax(1)
        assert c["accuracy"] == pytest.approx(float((pred == splits.test.y).mean()))
        assert c["errors"] == int((pred != splits.test.y).sum())


def test_grid_trains_distill_once_and_measures_in_one_session(grid):
    _, runs = grid
    result, spy = runs["cold"]
    assert spy.distills == 1  # four variants, one distill: the others reuse its cache entry
    stages = {c["name"]: [s["cached"] for s in c["stages"]] for c in result["candidates"]}
    assert stages["r0.3-int8_static-w4"] == [False] * 5  # the recipe's own runs first, cold
    assert stages["r0.3-int8_dynamic-w4"] == [True, True, True, True, False]  # only quantize differs
    assert stages["r0.5-int8_static-w4"] == [True, False, False, False, False]  # prune onwards
    assert stages["r0.5-int8_dynamic-w4"] == [True, True, True, True, False]
    assert len(spy.sessions) == 1  # every candidate, the teacher and the scratch student timed together
    assert sorted(spy.sessions[0]) == sorted(["teacher", "scratch", *stages]) == sorted(result["measured_together"])


def test_warm_search_recomputes_and_remeasures_nothing(grid):
    _, runs = grid
    (cold, _), (warm, spy) = runs["cold"], runs["warm"]
    assert spy.distills == 0 and spy.sessions == []
    assert all(s["cached"] for c in warm["candidates"] for s in c["stages"])
    keep = ("name", "accuracy", "size_bytes", "latency_ms", "frontier")
    assert [{k: c[k] for k in keep} for c in warm["candidates"]] == [{k: c[k] for k in keep} for c in cold["candidates"]]


def test_budget_stops_launching_variants_that_would_not_fit(grid):
    root, _ = grid
    # A clock that moves 10 s per reading: the recipe's own variant "takes" 10 s, so with 25 s of budget
    # nothing else fits; the recipe's own always runs (it is the reference).
    result = search(parse_recipe(RECIPE), root, quiet=True, budget=25, clock=itertools.count(0, 10).__next__, **AXES)
    assert result["variants_run"] == 1 and result["variants_planned"] == 4 and result["stopped_by_budget"]
    assert [c["name"] for c in result["candidates"]] == ["r0.3-int8_static-w4"]
    assert sorted(s["name"] for s in result["skipped"]) == ["r0.3-int8_dynamic-w4", "r0.5-int8_dynamic-w4",
                                                            "r0.5-int8_static-w4"]
    assert "left out 3 variant(s)" in (root / "srch" / "search" / "search.md").read_text()


def test_tpe_samples_ratios_within_the_range(grid):
    pytest.importorskip("optuna")
    root, _ = grid
    result = search(parse_recipe(RECIPE), root, quiet=True, method="tpe", trials=2, **AXES)
    assert result["method"] == "tpe" and 1 <= result["variants_run"] <= 2
    assert result["candidates"][0]["recipe"]  # the recipe's own point is the first trial
    for c in result["candidates"]:
        assert 0.3 <= c["ratio"] <= 0.5 and c["mode"] in ("int8_static", "int8_dynamic")


def test_identical_files_are_measured_once(grid):
    # On the width-4 student, torch-pruning removes as many channels at ratio 0.37 as at 0.3 (332 parameters
    # either way), and training is deterministic: the same file, which must not "dominate" itself by noise.
    root, _ = grid
    result = search(parse_recipe(RECIPE), root, quiet=True, ratios=["0.3,0.37"], modes=["int8_static"])
    rows = {c["name"]: c for c in result["candidates"]}
    assert rows["r0.37-int8_static-w4"]["same_as"] == "r0.3-int8_static-w4"
    assert rows["r0.3-int8_static-w4"]["same_as"] is None
    assert rows["r0.37-int8_static-w4"]["frontier"] and rows["r0.3-int8_static-w4"]["frontier"]
    assert result["measured_together"] == ["teacher", "scratch", "r0.3-int8_static-w4"]


def test_cli_search_prints_the_table(grid, tmp_path):
    root, _ = grid
    path = tmp_path / "srch.yaml"
    path.write_text(yaml.safe_dump(RECIPE))  # the same recipe: everything is cached in the fixture's root
    result = CliRunner().invoke(cli, ["search", str(path), "-o", str(root), "--ratios", "0.3", "--ratios", "0.5",
                                      "--modes", "int8_static,int8_dynamic"])
    assert result.exit_code == 0, result.output
    assert "compress search: srch" in result.output and "r0.5-int8_dynamic-w4" in result.output
    assert "4 of 4 planned variant(s)" in result.output
