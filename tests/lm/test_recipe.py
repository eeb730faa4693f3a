"""compress/lm/recipe.py through compress.recipe.load_recipe / parse_recipe (the one loader of every task): task: lm
recipes parse; bad ones fail with file:line:key and the valid choices."""

from pathlib import Path

import pytest
import yaml

from compress.errors import ChainError, RecipeError
from compress.lm.recipe import LMRecipe
from compress.recipe import load_recipe, parse_recipe

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
task: lm
name: t
teacher:
  model: {arch: gpt, width: 64, layers: 2, heads: 2, context: 32}
student:
  model: {arch: gpt, width: 32, layers: 1, heads: 2, context: 32}
stages:
  - {type: distill, steps: 5}
  - {type: export}
  - {type: quantize, mode: int4_weight_only, block_size: 64}
bench: {prompt: 8, new_tokens: 8}
samples: {prompt: 8, new_tokens: 8}
"""


def _load(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return load_recipe(p), str(p)


def _error(tmp_path, text, exc=RecipeError):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(exc) as info:
        load_recipe(p)
    return str(info.value).replace(str(p), "r.yaml")


def test_good_recipe_and_the_shipped_one(tmp_path):
    r, _ = _load(tmp_path, GOOD)
    assert isinstance(r, LMRecipe) and r.stages[2].block_size == 64 and r.stages[0].level == "token"
    shipped = load_recipe(REPO / "recipes" / "tiny-lm.yaml")
    assert isinstance(shipped, LMRecipe) and shipped.task == "lm"


def test_parse_recipe_dispatches_by_task_and_names_the_tasks():
    data = yaml.safe_load(GOOD)
    r = parse_recipe(data)
    assert isinstance(r, LMRecipe) and [st.type for st in r.stages] == ["distill", "export", "quantize"]
    assert r.stages[1].opset == 17  # the LM export stage's config, not the vision one's
    # the recipe dumped into report.json parses again (compress check re-measures from it)
    again = parse_recipe(r.model_dump(mode="json", by_alias=True))
    assert again == r
    with pytest.raises(RecipeError) as info:
        parse_recipe({**data, "task": "lmm"})
    assert str(info.value) == "task: invalid value 'lmm'; valid choices: classify, lm"
    with pytest.raises(RecipeError) as info:  # an LM stage key in a classification recipe is an unknown key there
        parse_recipe({**data, "task": "classify"})
    assert "unknown key" in str(info.value)


def test_bad_quantize_mode_names_line_and_choices(tmp_path):
    msg = _error(tmp_path, GOOD.replace("mode: int4_weight_only", "mode: int4"))
    assert msg == ("r.yaml:10: stages[2].mode: invalid value 'int4'; valid choices: int8_dynamic, int4_weight_only")


def test_bad_block_size(tmp_path):
    msg = _error(tmp_path, GOOD.replace("block_size: 64", "block_size: 48"))
    assert msg == "r.yaml:10: stages[2].block_size: invalid value 48; valid choices: 32, 64, 128, auto"


def test_unknown_stage_key_lists_the_stage_keys(tmp_path):
    msg = _error(tmp_path, GOOD.replace("{type: distill, steps: 5}", "{type: distill, epochs: 5}"))
    assert msg == ("r.yaml:8: stages[0].epochs: unknown key 'epochs'; valid keys: type, steps, lr, batch_size, "
                   "weight_decay, level, temperature, alpha, sequence, chain")


def test_unknown_stage_type(tmp_path):
    msg = _error(tmp_path, GOOD.replace("{type: export}", "{type: exprot}"))
    assert msg == "r.yaml:9: stages[1].type: unknown stage type 'exprot'; did you mean 'export'? valid choices: distill, export, finetune, prune, quantize"


def test_unknown_top_key(tmp_path):
    msg = _error(tmp_path, GOOD.replace("name: t", "name: t\nteachr: 1"))
    assert msg.startswith("r.yaml:3: teachr: unknown key 'teachr'; did you mean 'teacher'? valid keys: task, name, seed")


def _quantize_before_export(tmp_path):
    text = GOOD.replace("  - {type: export}\n  - {type: quantize, mode: int4_weight_only, block_size: 64}\n",
                        "  - {type: quantize}\n  - {type: export}\n")
    return _error(tmp_path, text, ChainError)


def test_stage_order_is_checked_by_the_shared_chain_rule(tmp_path):
    """compress.config.check_chain: each stage must accept what the one before produces (quantize takes onnx)."""
    msg = _quantize_before_export(tmp_path)
    assert msg.startswith("r.yaml:9: stages[1]: stage 'quantize' cannot follow stage 'distill' (stages[0]): 'quantize' "
                          "takes onnx models but stage 'distill' (stages[0]) produces torch models; put 'quantize' ")
    msg = _error(tmp_path, GOOD.replace("  - {type: export}\n", "  - {type: export}\n  - {type: finetune}\n"), ChainError)
    assert msg == ("r.yaml:10: stages[2]: stage 'finetune' cannot follow stage 'export' (stages[1]): 'finetune' takes "
                   "torch models but stage 'export' (stages[1]) produces onnx models; put 'finetune' before it")
    msg = _error(tmp_path, GOOD.replace("  - {type: export}\n", "  - {type: export}\n  - {type: export}\n"), ChainError)
    assert msg.startswith("r.yaml:10: stages[2]: stage 'export' cannot follow stage 'export' (stages[1])")
    # two quantize stages in a row are fine: both quantize the fp32 export (branch stages)
    r, _ = _load(tmp_path, GOOD.replace(
        "block_size: 64}\n", "block_size: 64}\n  - {type: quantize, mode: int8_dynamic}\n"))
    assert [st.type for st in r.stages] == ["distill", "export", "quantize", "quantize"]


def test_quantize_before_export_is_told_to_follow_an_export(tmp_path):
    assert _quantize_before_export(tmp_path).endswith("put 'quantize' after an export stage")


def test_context_mismatch_and_bench_that_does_not_fit(tmp_path):
    msg = _error(tmp_path, GOOD.replace("heads: 2, context: 32}\nstages", "heads: 2, context: 16}\nstages"))
    assert msg == ("r.yaml:6: student.model.context: context 16 differs from the teacher's (32); distillation "
                   "compares them window by window, so they must match")
    msg = _error(tmp_path, GOOD.replace("bench: {prompt: 8, new_tokens: 8}", "bench: {prompt: 20, new_tokens: 20}"))
    assert msg == "r.yaml:11: bench: prompt + new_tokens (20 + 20) must fit the context (32) with one token to spare"


def test_width_heads_and_text_source(tmp_path):
    msg = _error(tmp_path, GOOD.replace("width: 64, layers: 2, heads: 2", "width: 64, layers: 2, heads: 3"))
    assert msg == "r.yaml:4: teacher.model: width (64) must be divisible by heads (3)"
    msg = _error(tmp_path, GOOD.replace("name: t", "name: t\ndata: {source: text}"))
    assert msg.startswith("r.yaml:3: data: source 'text' needs a path")


def test_max_bpb_increase_is_validated_with_line_and_key(tmp_path):
    r, _ = _load(tmp_path, GOOD.replace("block_size: 64}", "block_size: 64, max_bpb_increase: 0.02}"))
    assert r.stages[2].max_bpb_increase == 0.02
    msg = _error(tmp_path, GOOD.replace("block_size: 64}", "block_size: 64, max_bpb_increase: -0.1}"))
    assert msg.startswith("r.yaml:10: stages[2].max_bpb_increase: ")
    assert "greater than or equal to 0" in msg
    msg = _error(tmp_path, GOOD.replace("block_size: 64}", "block_size: 64, max_bpb_increase: 20}"))
    assert msg.startswith("r.yaml:10: stages[2].max_bpb_increase: ") and "less than or equal to 8" in msg
    msg = _error(tmp_path, GOOD.replace("block_size: 64}", "block_size: 64, max_accuracy_drop: 0.01}"))
    assert msg.startswith("r.yaml:10: stages[2].max_accuracy_drop: unknown key 'max_accuracy_drop'; valid keys: ")
    assert "max_bpb_increase" in msg


def test_int8_fallback_needs_int4_and_a_budget(tmp_path):
    r, _ = _load(tmp_path, GOOD.replace("block_size: 64}", "block_size: 64, max_bpb_increase: 0.02, fallback: int8}"))
    assert r.stages[2].fallback == "int8"
    msg = _error(tmp_path, GOOD.replace("block_size: 64}", "block_size: 64, fallback: int8}"))
    assert msg == ("r.yaml:10: stages[2].fallback: fallback int8 is for mode int4_weight_only with max_bpb_increase "
                   "(the layers the search keeps out of INT4 become INT8); use fallback: fp32 (got 'int8')")
    msg = _error(tmp_path, GOOD.replace("block_size: 64}", "block_size: 64, fallback: int4}"))
    assert msg == "r.yaml:10: stages[2].fallback: invalid value 'int4'; did you mean 'int8'? valid choices: fp32, int8"


def test_a_distill_stage_chain_is_checked_like_the_other_models(tmp_path):
    chain = "chain: [{arch: gpt, width: 48, layers: 1, heads: 2, context: 32}]"
    r, _ = _load(tmp_path, GOOD.replace("{type: distill, steps: 5}", "{type: distill, steps: 5, " + chain + "}"))
    assert [c.width for c in r.stages[0].chain] == [48]
    r, _ = _load(tmp_path, GOOD.replace("{type: distill, steps: 5}",
                                        "{type: distill, steps: 5, " + chain.replace("chain", "assistants") + "}"))
    assert [c.width for c in r.stages[0].chain] == [48]  # the vision stage's alias
    msg = _error(tmp_path, GOOD.replace("{type: distill, steps: 5}",
                                        "{type: distill, steps: 5, " + chain.replace("32}]", "16}]") + "}"))
    assert msg == ("r.yaml:8: stages[0].chain[0].context: context 16 differs from the teacher's (32); distillation "
                   "compares them window by window, so they must match")
    both = GOOD.replace("student:", "assistants:\n  - model: {arch: gpt, width: 48, layers: 1, heads: 2, context: 32}\n"
                                    "student:").replace("{type: distill, steps: 5}", "{type: distill, steps: 5, " + chain + "}")
    msg = _error(tmp_path, both)
    assert msg == ("r.yaml:10: stages[0].chain: give the progressive chain once: top-level 'assistants' (each runs "
                   "every torch stage) or a distill stage's 'chain' (each step distilled by that stage), not both")


def test_int4_settings_auto_has_a_default_budget_and_is_int4_only(tmp_path):
    r, _ = _load(tmp_path, GOOD.replace("block_size: 64}", "block_size: auto, accuracy_level: auto}"))
    q = r.stages[2]
    assert q.auto and q.budget == 0.02 and q.max_bpb_increase is None
    r, _ = _load(tmp_path, GOOD.replace("block_size: 64}", "accuracy_level: auto, max_bpb_increase: 0.1}"))
    assert r.stages[2].budget == 0.1 and r.stages[2].block_size == 32
    msg = _error(tmp_path, GOOD.replace("mode: int4_weight_only, block_size: 64}", "mode: int8_dynamic, accuracy_level: auto}"))
    assert msg == ("r.yaml:10: stages[2].accuracy_level: accuracy_level auto chooses MatMulNBits settings, for mode "
                   "int4_weight_only; mode int8_dynamic has none (got 'auto')")


def test_a_sequence_prompt_longer_than_the_context_is_the_distill_stage_s_own_rule(tmp_path, lm_docs):
    """compress/stages/lm_distill.py's StageSpec.check, run by compress validate before any compute."""
    from compress.pipeline import validate

    lm_docs()
    p = tmp_path / "r.yaml"
    p.write_text(GOOD.replace("{type: distill, steps: 5}", "{type: distill, steps: 5, level: both, sequence: {prompt: 40}}")
                 .replace("task: lm\n", "task: lm\ndata: {source: text, path: docs, max_bytes: 100000}\n"))
    with pytest.raises(RecipeError) as info:
        validate(load_recipe(p), output=tmp_path / "out")
    assert str(info.value).replace(str(p), "r.yaml") == (
        "r.yaml:9: stages[0].sequence.prompt: prompt (40) must be shorter than the context (32)")
