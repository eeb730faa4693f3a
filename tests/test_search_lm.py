"""``compress search`` on a language-model recipe: how a variant edits the LM stages (ratio -> prune ``heads``/``mlp``,
one quantize stage with the mode, fp32 without one, the gpt student's width), what is refused before any compute,
and a tiny grid end to end (every variant built, bits per byte lower-is-better on the frontier, search.json/md)."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from compress.cli import cli
from compress.errors import RecipeError
from compress.pipeline import chain_keys, prepare
from compress.recipe import load_recipe, parse_recipe
from compress.search import (Point, SearchError, dominates, objectives, own_point, pareto, parse_axes, search,
                             variant)

RECIPE = {
    "task": "lm", "name": "lmsrch", "threads": 1,
    "data": {"source": "text", "path": "docs", "max_bytes": 100_000, "split": {"val": 0.2, "test": 0.2}},
    "teacher": {"model": {"arch": "gpt", "width": 32, "layers": 1, "heads": 2, "context": 16},
                "train": {"steps": 4, "batch_size": 8}},
    "student": {"model": {"arch": "gpt", "width": 16, "layers": 1, "heads": 2, "context": 16}},
    "stages": [{"type": "distill", "steps": 3, "batch_size": 8},
               {"type": "prune", "heads": 0.5, "mlp": 0.5},
               {"type": "export"},
               {"type": "quantize", "mode": "int8_dynamic"}],
    "eval": {"max_tokens": 256},
    "bench": {"prompt": 4, "new_tokens": 4, "rounds": 3, "calls": 1},
    "samples": {"count": 1, "prompt": 4, "new_tokens": 4},
}
AXES = {"ratios": ["0,0.5"], "modes": ["fp32,int8_dynamic"]}  # 2 x 2; r0.5-int8_dynamic is the recipe's own
NAMES = {"r0-fp32-w16", "r0-int8_dynamic-w16", "r0.5-fp32-w16", "r0.5-int8_dynamic-w16"}
BPB = ("bits_per_byte", False)  # the LM task's metric: lower is better


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One output root for the module: every test's corpus has the same bytes (lm_docs), so the cache is shared."""
    return tmp_path_factory.mktemp("lmsearch")


def _recipe(tmp_path, lm_docs, **changes):
    """The recipe file beside a fresh lm_docs corpus, with top-level keys replaced; its loaded recipe."""
    lm_docs()
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, **changes}, sort_keys=False))
    return path, load_recipe(path)


# --- variants ---------------------------------------------------------------------------------------


def test_variant_sets_prune_fractions_keeps_one_quantize_stage_and_the_width(tmp_path, lm_docs):
    stages = [RECIPE["stages"][0], {"type": "prune", "heads": 0.5, "mlp": 0.25}, {"type": "export"},
              {"type": "quantize", "mode": "int8_dynamic"},
              {"type": "quantize", "mode": "int4_weight_only", "block_size": 64, "accuracy_level": 0,
               "max_bpb_increase": 0.01, "fallback": "int8"}]
    _, recipe = _recipe(tmp_path, lm_docs, stages=stages)
    assert own_point(recipe) == Point(0.5, "int4_weight_only", 16)  # the larger fraction; the last quantize's mode

    def edited(p: Point):
        v = variant(recipe, p)
        return [st.type for st in v.stages], {st.type: st for st in v.stages}, v

    # the ratio sets each fraction the recipe prunes; one quantize stage, the recipe's last, keeps its INT4 keys
    types, by, _ = edited(Point(0.3, "int4_weight_only", 16))
    assert types == ["distill", "prune", "export", "quantize"]
    assert (by["prune"].heads, by["prune"].mlp) == (0.3, 0.3)
    q = by["quantize"]
    assert (q.mode, q.block_size, q.accuracy_level, q.max_bpb_increase, q.fallback) == ("int4_weight_only", 64, 0,
                                                                                         0.01, "int8")
    # another mode: the INT4-only keys go back to their defaults (fallback int8 would be refused with int8_dynamic);
    # max_bpb_increase bounds INT8 as well and stays
    types, by, _ = edited(Point(0.3, "int8_dynamic", 16))
    q = by["quantize"]
    assert types == ["distill", "prune", "export", "quantize"]
    assert (q.mode, q.block_size, q.accuracy_level, q.max_bpb_increase, q.fallback) == ("int8_dynamic", 32, 4,
                                                                                         0.01, "fp32")
    # ratio 0 and fp32: neither stage; the gpt student's width
    types, _, v = edited(Point(0.0, "fp32", 24))
    assert types == ["distill", "export"] and v.student.model.width == 24 and v.teacher == recipe.teacher
    # a recipe pruning MLP units only keeps its heads
    _, mlp_only = _recipe(tmp_path, lm_docs, stages=[RECIPE["stages"][0], {"type": "prune", "mlp": 0.5},
                                                     {"type": "export"}])
    v = variant(mlp_only, Point(0.3, "int8_dynamic", 16))
    assert (v.stages[1].heads, v.stages[1].mlp) == (0.0, 0.3)
    assert [(st.type, getattr(st, "mode", None)) for st in v.stages][-1] == ("quantize", "int8_dynamic")  # appended


def test_variant_at_the_recipes_own_point_shares_its_cache_keys(tmp_path, lm_docs):
    _, recipe = _recipe(tmp_path, lm_docs)
    prep = prepare(recipe)
    keys = chain_keys(recipe, prep)
    assert chain_keys(variant(recipe, Point(0.5, "int8_dynamic", 16)), prep) == keys  # search and run share entries
    other = chain_keys(variant(recipe, Point(0.3, "int8_dynamic", 16)), prep)
    assert other[0] == keys[0] and other[1] != keys[1]  # the same distill, another prune


def test_variant_keeps_what_the_recipe_left_unset(tmp_path):
    pytest.importorskip("transformers")  # an hf spec is checked against the installed transformers
    data = {**RECIPE, "teacher": {"model": {"hf": str(tmp_path / "t"), "context": 16}},
            "stages": [RECIPE["stages"][0], {"type": "export"}, {"type": "quantize"}]}
    recipe = parse_recipe(data)
    v = variant(recipe, Point(0.0, "int8_dynamic", 16))
    # an hf spec takes no width/layers/heads, and a teacher without `train` is used as loaded (compress.lm.task)
    assert v.teacher == recipe.teacher and "train" not in v.teacher.model_fields_set
    assert v.stages[-1].mode == "int8_dynamic"


# --- refused before any compute -------------------------------------------------------------------


def test_refusals_name_the_lm_fix(tmp_path, lm_docs):
    no_prune = [st for st in RECIPE["stages"] if st["type"] != "prune"]
    path, _ = _recipe(tmp_path, lm_docs, stages=no_prune)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["search", str(path), "-o", str(out), "--ratios", "0.3", "--modes", "fp32"])
    assert res.exit_code == 2, res.output
    assert (f"{path}:" in res.output and "stages: --ratios: the recipe has no prune stage to set a ratio on; add one, "
            "e.g. {type: prune, heads: 0.3, mlp: 0.3}, or search --ratios 0 only" in res.output)
    assert not out.exists()  # nothing computed, nothing written

    _, recipe = _recipe(tmp_path, lm_docs)
    with pytest.raises(SearchError, match=r"--modes: unknown mode 'int8_static'; did you mean 'int8_dynamic'\? "
                                          r"valid choices: fp32, int8_dynamic, int4_weight_only$"):
        parse_axes(recipe, modes=["int8_static"])
    with pytest.raises(RecipeError, match=r"student\.model: --widths 15: width \(15\) must be divisible by heads "
                                          r"\(2\)"):
        parse_axes(recipe, widths=["16,15"])
    _, torch_only = _recipe(tmp_path, lm_docs, stages=RECIPE["stages"][:2])
    with pytest.raises(RecipeError, match=r"stages: --modes: the recipe has no quantize stage and its chain ends in a "
                                          r"torch model; add \{type: export\}"):
        parse_axes(torch_only, ratios=["0.5"], modes=["int8_dynamic"])
    assert parse_axes(torch_only, ratios=["0.5"], modes=["fp32"]).modes == ("fp32",)


def test_widths_of_an_hf_student_are_refused(tmp_path):
    pytest.importorskip("transformers")
    data = {**RECIPE, "student": {"model": {"hf": str(tmp_path / "s"), "context": 16}},
            "stages": [RECIPE["stages"][0], {"type": "export"}]}
    recipe = parse_recipe(data)
    assert own_point(recipe).width is None
    assert parse_axes(recipe, ratios=["0"], modes=["fp32"]).widths == (None,)
    with pytest.raises(RecipeError, match=r"student\.model: --widths: the student is a Hugging Face folder \(hf:\), "
                                          r"whose width is its config's"):
        parse_axes(recipe, ratios=["0"], widths=["16"])


# --- the frontier: bits per byte, lower is better -------------------------------------------------


def test_lower_bits_per_byte_at_equal_latency_and_size_dominates():
    def m(bpb):
        return {"bits_per_byte": bpb, "latency_ms": {"p50": 0.05}, "size_bytes": 40_000}

    low, high = objectives(m(2.0), BPB), objectives(m(2.5), BPB)
    assert dominates(low, high) and not dominates(high, low)
    assert pareto([high, low]) == [False, True]
    # accuracy keeps its direction (the default): higher is better
    acc = {"accuracy": 0.9, "latency_ms": {"p50": 0.05}, "size_bytes": 1}
    assert dominates(objectives(acc), objectives({**acc, "accuracy": 0.8}))


# --- a tiny grid ------------------------------------------------------------------------------------


def test_lm_grid_search_end_to_end(tmp_path, lm_docs, root):
    path, recipe = _recipe(tmp_path, lm_docs)
    res = CliRunner().invoke(cli, ["search", str(path), "-o", str(root), "--ratios", "0,0.5",
                                   "--modes", "fp32,int8_dynamic"])
    assert res.exit_code == 0, res.output
    assert "compress search: lmsrch" in res.output and "test bpb" in res.output and "p50/token (us)" in res.output
    folder = root / "lmsrch" / "search"
    data = json.loads((folder / "search.json").read_text())
    assert data["task"] == "lm" and data["metric"] == "bits_per_byte"
    assert data["objectives"]["bits_per_byte"] == "test split, min"
    assert "per decoded token" in data["objectives"]["latency"]
    cands = {c["name"]: c for c in data["candidates"]}
    assert set(cands) == NAMES and data["variants_run"] == data["variants_planned"] == 4  # every variant built
    assert [n for n, c in cands.items() if c["recipe"]] == ["r0.5-int8_dynamic-w16"]  # the recipe's own, marked
    assert [r["role"] for r in data["references"]] == ["teacher", "scratch"]
    assert sorted(data["measured_together"]) == sorted(["teacher", "scratch", *NAMES])
    stages = {n: [s["type"] for s in c["stages"]] for n, c in cands.items()}
    assert stages["r0-fp32-w16"] == ["distill", "export"]
    assert stages["r0.5-int8_dynamic-w16"] == ["distill", "prune", "export", "quantize"]
    assert all(c["stages"][0]["cached"] for n, c in cands.items() if not c["recipe"])  # distill trained once
    for c in [*cands.values(), *data["references"]]:
        assert 0 < c["bits_per_byte"] < 9 and 0 < c["val_bits_per_byte"] < 9 and c["perplexity"] > 1
        assert c["errors"] is None and c["macs"] is None and c["latency_batch_ms"] is None and "at_chance" not in c
        assert c["latency_ms"]["p50"] > 0 and c["size_bytes"] > 0
    assert "chance" not in data  # chance-level flags are classification's
    assert cands["r0.5-int8_dynamic-w16"]["size_bytes"] < cands["r0-fp32-w16"]["size_bytes"]
    # the frontier is that of the reported numbers with bits/byte lower-is-better
    pts = {n: objectives(c, BPB) for n, c in cands.items()}
    assert [c["frontier"] for c in data["candidates"]] == pareto([pts[c["name"]] for c in data["candidates"]])
    for n, c in cands.items():
        assert c["frontier"] or dominates(pts[c["dominated_by"]], pts[n])
    # bits/byte is the file's own, on the test split
    from compress.lm.data import eval_windows, load_text
    from compress.lm.onnx import OrtDecoder
    from compress.lm.train import evaluate_lm

    test = eval_windows(load_text(recipe.data, recipe.seed).test, 16, recipe.eval.max_tokens)
    c = cands["r0.5-fp32-w16"]
    assert c["bits_per_byte"] == pytest.approx(evaluate_lm(OrtDecoder(c["path"]).logits, test).bits_per_byte, abs=1e-5)
    md = (folder / "search.md").read_text()
    assert all(f"| {n} |" in md for n in [*NAMES, "teacher", "scratch"])
    assert "| test bpb | val bpb | p50/token (us) | p50 batch (ms) |" in md
    assert "![bits/byte vs latency](search.png)" in md
    row = next(line for line in md.splitlines() if line.startswith("| r0-fp32-w16 |")).split(" | ")
    assert row[8] == "-"  # no batch latency for a language model
    assert (folder / "search.png").read_bytes()[:4] == b"\x89PNG"


def test_frontier_prefers_fewer_bits_per_byte_at_equal_latency_and_size(tmp_path, lm_docs, root, monkeypatch):
    # Every file "measured" at the same latency and size: only bits per byte differs, and the fewest wins.
    from compress.lm.task import LMTask

    real = LMTask.measure

    def flat(self, *a, **k):
        models, extra = real(self, *a, **k)
        return [{**m, "latency_ms": {"p50": 0.1, "p90": 0.1}, "size_bytes": 1000} for m in models], extra

    monkeypatch.setattr(LMTask, "measure", flat)
    _, recipe = _recipe(tmp_path, lm_docs)
    result = search(recipe, root, quiet=True, **AXES)
    bpb = {c["name"]: c["bits_per_byte"] for c in result["candidates"]}
    best = min(bpb.values())
    assert result["frontier"] == [n for n, v in bpb.items() if v == best]  # accuracy's direction would pick the worst
    for c in result["candidates"]:
        assert c["frontier"] or bpb[c["dominated_by"]] < c["bits_per_byte"]


def test_tpe_and_storage_minimize_validation_bits_per_byte(tmp_path, lm_docs, root):
    optuna = pytest.importorskip("optuna")
    _, recipe = _recipe(tmp_path, lm_docs)
    result = search(recipe, root, quiet=True, method="tpe", trials=2, **AXES)
    assert result["candidates"][0]["recipe"] and 1 <= result["variants_run"] <= 2
    for c in result["candidates"]:
        assert 0 <= c["ratio"] <= 0.5 and c["mode"] in ("fp32", "int8_dynamic") and c["val_bits_per_byte"] > 0
    url = f"sqlite:///{tmp_path}/search.db"
    worker = search(recipe, root, quiet=True, storage=url, ratios=["0.5"], modes=["fp32,int8_dynamic"])
    assert sorted(worker["built"]) == ["r0.5-fp32-w16", "r0.5-int8_dynamic-w16"]
    study = optuna.load_study(study_name="lmsrch", storage=url)
    assert [d.name for d in study.directions] == ["MINIMIZE"] * 3  # validation bits/byte, probe latency, size
    assert all(t.values[0] == pytest.approx(t.user_attrs["probe"]["val_bits_per_byte"]) for t in study.trials)
    report = search(recipe, root, quiet=True, storage=url, report=True, ratios=["0.5"], modes=["fp32,int8_dynamic"])
    assert report["metric"] == "bits_per_byte" and {c["name"] for c in report["candidates"]} == {
        "r0.5-fp32-w16", "r0.5-int8_dynamic-w16"}
