"""compress/lm/hf.py: local Hugging Face causal LMs in task: lm recipes (loading, errors, KV cache, ONNX, end to end)."""

import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

from compress.cli import cli  # noqa: E402
from compress.errors import RecipeError  # noqa: E402
from compress.lm import hf as lmhf  # noqa: E402
from compress.lm import onnx as lmonnx  # noqa: E402
from compress.lm.model import generate  # noqa: E402
from compress.pipeline import validate  # noqa: E402
from compress.recipe import load_recipe  # noqa: E402

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


def gpt2_folder(path, seed=0, **kw):
    cfg = transformers.GPT2Config(**{"vocab_size": 256, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 2,
                                     "bos_token_id": 0, "eos_token_id": 0, **kw})
    torch.manual_seed(seed)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(str(path))
    return path


def llama_folder(path, seed=0):
    """Rotary positions and grouped-query attention: 4 query heads share 2 key/value heads."""
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(path))
    return path


@pytest.mark.parametrize("make", [gpt2_folder, llama_folder])
def test_adapter_logits_and_kv_cache_match_transformers(tmp_path, make):
    folder = make(tmp_path / "m")
    model = lmhf.load_hf(folder, context=32)
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
    x = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(x).logits
        full, present = model(x)
        assert full.shape == (2, 20, 256)
        assert torch.allclose(full, want, atol=1e-5)
        # prefill 12 positions, then 8 one-token steps through the cache: the same logits as the full pass
        logits, past = model(x[:, :12])
        steps = [logits]
        for j in range(12, 20):
            logits, past = model(x[:, j:j + 1], past)
            steps.append(logits)
    assert torch.allclose(torch.cat(steps, 1), want, atol=1e-5)
    assert past[0][0].shape == (2, model.cfg.heads_of(0), 20, model.cfg.dim)
    if make is llama_folder:
        assert model.cfg.heads_of(0) == 2 and model.cfg.dim == 8  # key/value heads, not query heads
    # greedy generation with the cache equals argmax over full recomputation
    prompt = x[:1, :6]
    new = generate(model, prompt, 5)[0]
    seq = prompt
    for _ in range(5):
        with torch.no_grad():
            seq = torch.cat([seq, ref(seq).logits[:, -1:].argmax(-1)], 1)
    assert new.tolist() == seq[0, 6:].tolist()


def test_fresh_like_is_seeded_and_differs_from_the_folder(tmp_path):
    model = lmhf.load_hf(gpt2_folder(tmp_path / "m"), context=32)
    a, b, c = lmhf.fresh_like(model, 5), lmhf.fresh_like(model, 5), lmhf.fresh_like(model, 6)
    w = lambda m: m.hf.transformer.h[0].attn.c_attn.weight  # noqa: E731
    assert torch.equal(w(a), w(b)) and not torch.equal(w(a), w(c)) and not torch.equal(w(a), w(model))
    assert a.cfg.as_dict()["config"] == model.cfg.as_dict()["config"]
    assert a.cfg.origin == "fresh init, seed 5" and model.cfg.origin.startswith("folder weights ")


def test_save_hf_is_atomic_and_reloads_to_the_same_logits(tmp_path):
    model = lmhf.load_hf(gpt2_folder(tmp_path / "m"), context=32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # "trained": differs from the source folder
    dst = lmhf.save_hf(model, tmp_path / "out" / "student-hf")
    lmhf.save_hf(model, dst)  # over an existing folder
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["student-hf"]  # no temp folder left behind
    assert (dst / "model.safetensors").exists() and (dst / "config.json").exists()
    x = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        assert torch.equal(lmhf.load_hf(dst, 32)(x)[0], model(x)[0])


def test_onnx_export_parity_quantize_and_ort_generation(tmp_path):
    model = lmhf.load_hf(llama_folder(tmp_path / "m"), context=32)
    path = lmonnx.export_decoder(model, tmp_path / "m.onnx")
    windows = np.random.default_rng(0).integers(0, 256, (2, 33)).astype(np.int64)
    par = lmonnx.parity(model, path, windows)
    assert par["max_abs_logits_full"] < 1e-4 and par["max_abs_logits_kv_cache"] < 1e-4
    assert not model.training  # the export left dropout off
    dec = lmonnx.OrtDecoder(path)
    prompt = windows[:1, :8]
    assert dec.generate(prompt, 6)[0].tolist() == generate(model, torch.from_numpy(prompt), 6)[0].tolist()
    info = lmonnx.quantize_decoder(path, tmp_path / "m-int4.onnx", "int4_weight_only", block_size=32, accuracy_level=4)
    assert info["matmulnbits_nodes"] > 0
    assert lmonnx.OrtDecoder(tmp_path / "m-int4.onnx").logits(windows[:, :-1]).shape == (2, 32, 256)


# ---- recipes ------------------------------------------------------------------------------------------------------

BASE = """\
task: lm
name: t
teacher:
  model: {teacher}
student:
  model: {student}
stages:
  - {{type: distill, steps: 2}}
{extra}bench: {{prompt: 4, new_tokens: 4}}
samples: {{prompt: 4, new_tokens: 4}}
"""


def _error(tmp_path, teacher="{hf: m, context: 32}", student="{arch: gpt, width: 16, layers: 1, heads: 2, context: 32}",
           extra=""):
    p = tmp_path / "r.yaml"
    p.write_text(BASE.format(teacher=teacher, student=student, extra=extra))
    with pytest.raises(RecipeError) as info:
        load_recipe(p)
    return str(info.value).replace(str(tmp_path) + "/", "")


def test_relative_hf_path_resolves_against_the_recipe(tmp_path):
    gpt2_folder(tmp_path / "m")
    p = tmp_path / "r.yaml"
    p.write_text(BASE.format(teacher="{hf: m, context: 32}", student="{hf: m, context: 32}", extra=""))
    recipe = load_recipe(p)
    assert recipe.teacher.model.hf == tmp_path / "m" and recipe.student.model.hf == tmp_path / "m"


def test_wrong_vocabulary_names_the_key_the_size_and_why(tmp_path):
    gpt2_folder(tmp_path / "m", vocab_size=300)
    msg = _error(tmp_path)
    assert msg.startswith("r.yaml:4: teacher.model.hf: m has vocab_size 300 (gpt2); the LM pipeline is byte-level "
                          "and needs exactly 256 (id i = byte i)")
    assert "must share one vocabulary" in msg and "Sequence-level distillation across tokenizers is not built" in msg


def test_missing_folder_config_and_corrupt_weights(tmp_path):
    assert _error(tmp_path) == "r.yaml:4: teacher.model.hf: Hugging Face model folder m not found"
    (tmp_path / "m").mkdir()
    assert "m has no config.json" in _error(tmp_path)
    gpt2_folder(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    assert _error(tmp_path) == ("r.yaml:4: teacher.model.hf: m/model.safetensors: corrupt or truncated safetensors "
                                "file (Error while deserializing header: incomplete metadata, file not fully covered)")
    weights.unlink()
    assert _error(tmp_path) == "r.yaml:4: teacher.model.hf: m has no *.safetensors weights"
    transformers.T5Config(vocab_size=256, d_model=16, num_layers=1, num_heads=2, d_ff=32).save_pretrained(str(tmp_path / "m"))
    assert _error(tmp_path) == ("r.yaml:4: teacher.model.hf: m: model_type 't5' is not a causal LM (AutoModelForCausalLM "
                                "has no class for it); the LM pipeline needs a decoder that predicts the next token")


def test_context_longer_than_the_position_table(tmp_path):
    gpt2_folder(tmp_path / "m")  # 64 positions
    msg = _error(tmp_path, teacher="{hf: m, context: 128}",
                 student="{arch: gpt, width: 16, layers: 1, heads: 2, context: 128}")
    assert msg.startswith("r.yaml:4: teacher.model.hf: m has 64 positions (gpt2), fewer than the teacher's context (128)")


def test_hf_rules(tmp_path, monkeypatch):
    gpt2_folder(tmp_path / "m")
    msg = _error(tmp_path, teacher="{hf: m, width: 64, context: 32}")
    assert "teacher.model" in msg and "width come from the folder's config.json with 'hf:'" in msg
    # prune's own rule (its StageSpec.check), run by compress validate before any compute
    p = tmp_path / "r.yaml"
    p.write_text(BASE.format(teacher="{hf: m, context: 32}", student="{hf: m, context: 32}",
                             extra="  - {type: prune, heads: 0.5}\n"))
    with pytest.raises(RecipeError) as info:
        validate(load_recipe(p), output=tmp_path / "out")
    assert str(info.value).replace(str(tmp_path) + "/", "").startswith(
        "r.yaml:9: stages[1]: stage 'prune' slices heads and MLP units of the built-in GPT; student is an hf model")
    monkeypatch.setattr(lmhf, "have_transformers", lambda: False)
    assert _error(tmp_path) == ("r.yaml:4: teacher.model.hf: model: {hf: ...} needs the optional package "
                                "'transformers': pip install 'compress[hf]'")
    monkeypatch.setattr(lmhf, "have_transformers", lambda: True)
    monkeypatch.setattr("importlib.metadata.version", lambda name: "4.45.2")
    assert _error(tmp_path) == ("r.yaml:4: teacher.model.hf: model: {hf: ...} needs transformers >= 4.56 (found "
                                "4.45.2; its key/value cache API differs): pip install 'compress[hf]'")


# ---- end to end -----------------------------------------------------------------------------------------------------

RUN = """\
task: lm
name: {name}
threads: 1
data: {{source: text, path: docs, max_bytes: 100000, split: {{val: 0.2, test: 0.2}}}}
teacher:
  model: {{hf: teacher-hf, context: 16}}
{teacher_train}{assistants}student:
  model: {student}
stages:
  - {{type: distill, level: both, steps: 3, batch_size: 8, sequence: {{samples: 8, prompt: 4}}}}
  - {{type: finetune, steps: 2, batch_size: 8}}
  - {{type: export}}
  - {{type: quantize, mode: int4_weight_only, block_size: 32, accuracy_level: 4}}
{quantize_within}eval: {{max_tokens: 256}}
bench: {{prompt: 4, new_tokens: 4, rounds: 3, calls: 1}}
samples: {{count: 1, prompt: 6, new_tokens: 6}}
"""


@pytest.mark.parametrize("student", ["gpt", "hf"])
def test_lm_run_with_hf_models(tmp_path, student, lm_docs):
    lm_docs()
    gpt2_folder(tmp_path / "teacher-hf", seed=0)
    gpt2_folder(tmp_path / "student-src", seed=1, n_layer=1)
    spec = "{arch: gpt, width: 16, layers: 1, heads: 2, context: 16}" if student == "gpt" else "{hf: student-src, context: 16}"
    recipe = tmp_path / "r.yaml"
    # with an HF student, the HF teacher is also fine-tuned first (teacher.train); else it is used as loaded
    train = "  train: {steps: 2, batch_size: 8}\n" if student == "hf" else ""
    # with a GPT student, an HF assistant stands between teacher and student
    assistants = "assistants:\n  - model: {hf: student-src, context: 16}\n" if student == "gpt" else ""
    # with an HF student, also the accuracy-aware quantize stage (per-layer sensitivity on validation bits/byte)
    within = "  - {type: quantize, mode: int8_dynamic, max_bpb_increase: 0}\n" if student == "hf" else ""
    recipe.write_text(RUN.format(name=f"hf-{student}", student=spec, teacher_train=train, assistants=assistants,
                                 quantize_within=within))
    runner = CliRunner()
    res = runner.invoke(cli, ["validate", str(recipe), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "teacher: hf " in res.output and "(gpt2), 2 layers, context 16" in res.output
    res = runner.invoke(cli, [str(recipe), "-o", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out" / f"hf-{student}"
    report = json.loads((out / "report.json").read_text())
    by = {m["name"]: m for m in report["models"]}
    chain = ["assistant0"] if student == "gpt" else []
    within = [] if student == "gpt" else ["05_quantize"]
    assert list(by) == ["teacher", "scratch", *chain, "01_distill", "02_finetune", "03_export", "04_quantize", *within,
                        "final"]
    for m in by.values():
        assert 0 < m["bits_per_byte"] < 12 and 0 <= m["agreement"] <= 1 and m["format"] == "onnx"
    assert by["teacher"]["agreement"] == 1.0
    # the export stage's file is the finetuned student's, byte for byte, checked against torch with the KV cache
    assert by["03_export"]["sha256"] == by["02_finetune"]["sha256"]
    assert by["03_export"]["info"]["max_abs_logits_kv_cache"] < 1e-3 and by["03_export"]["info"]["kv_cache"]
    assert by["04_quantize"]["info"]["tag"] == "int4-b32-a4" and by["04_quantize"]["info"]["matmulnbits_nodes"] > 0
    teacher = by["teacher"]["info"]
    assert teacher["spec"].startswith("hf ") and "(gpt2), 2 layers, context 16" in teacher["spec"]
    if student == "gpt":
        assert teacher["note"].startswith("used as loaded") and "steps" not in teacher
    else:
        assert teacher["steps"] == 2 and "note" not in teacher
    samples = report["samples"][0]["continuations"]
    assert set(samples) == {"teacher", "scratch", *chain, "01_distill", "02_finetune", "04_quantize", *within}
    scratch = by["scratch"]["info"]
    if student == "gpt":
        assert not (out / "student-hf").exists()
        assert by["assistant0"]["role"] == "assistant" and by["assistant0"]["info"]["steps"] == 2  # its finetune
        assert by["assistant0"]["params"] > by["01_distill"]["params"]
        return
    q = by["05_quantize"]["info"]
    assert q["tag"] == "int8-max0" and by["final"]["sha256"] == by["05_quantize"]["sha256"]
    # every linear layer of the GPT-2 graph is found; budget 0: unless the all-INT8 file already scores no worse on
    # validation, the per-layer search runs and gives each of them a sensitivity row
    assert q["linear_layers"] == q["quantized_layers"] + len(q["fp32_layers"]) >= 4
    if q["tables"]:
        assert len(q["tables"][0]["rows"]) == q["linear_layers"]
    else:
        assert q["budget_met"] and q["val_bpb_increase"] <= 0 and "no layer needs to stay fp32" in q["notes"][0]
    assert scratch["note"].startswith("the student's config")
    assert scratch["note"].endswith("trained with CE only for the student's 5 steps of 8 windows at lr 0.003")
    # the trained student, saved as an HF folder, reloads to the exported student's logits
    saved = by["final"]["info"]["hf_folder"]
    assert saved["folder"] == str(out / "student-hf") and "model.safetensors" in saved["files"]
    x = np.random.default_rng(0).integers(0, 256, (2, 16)).astype(np.int64)

    def reloaded_matches_the_export():
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(out / "student-hf"), local_files_only=True).eval()
        ort_logits = lmonnx.OrtDecoder(out / "stages" / "03_export.onnx").logits(x)
        with torch.no_grad():
            ref = reloaded(torch.from_numpy(x)).logits.numpy()
        assert np.abs(ref - ort_logits).max() < 1e-4
        return ref

    ref = reloaded_matches_the_export()
    src = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "student-src"), local_files_only=True).eval()
    with torch.no_grad():
        assert np.abs(src(torch.from_numpy(x)).logits.numpy() - ref).max() > 1e-3  # it was trained
    # a second run reuses every trained model and stage (tied embeddings go through the cache), and saves the same folder
    res = runner.invoke(cli, [str(recipe), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert sum("reusing cached weights" in ln for ln in lines) == 2, res.output
    assert sum(ln.startswith("stage ") and ": cached " in ln for ln in lines) == 5, res.output
    # the same files, byte for byte (a cached model keeps its tied head), so the measurements come from the cache too
    assert "measurements: cached" in res.output
    again = json.loads((out / "report.json").read_text())
    assert [m["sha256"] for m in again["models"]] == [m["sha256"] for m in report["models"]]
    assert np.array_equal(reloaded_matches_the_export(), ref)
