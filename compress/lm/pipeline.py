"""The language-model chain: data -> teacher -> (assistants or a distill stage's chain) -> student stages -> export -> quantize -> measure -> report.

Held-out numbers are on the test split's documents, never trained on: bits per byte, perplexity per
byte and top-1 next-byte agreement with the teacher for every model (torch and onnxruntime files).
The scratch student has the student's architecture and exactly the student's training steps.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch

from compress._progress import progress_bar, say
from compress.cache import cache_key, sha256_file
from compress.errors import ModelError
from compress.lm import onnx as lmonnx
from compress.lm.data import eval_windows, load_text
from compress.lm.model import GPT, GPTConfig, generate
from compress.lm.recipe import LMRecipe, model_specs
from compress.lm.train import Budget, evaluate_lm, teacher_continuations, torch_logits, train_lm

__all__ = ["run", "validate"]


def _gpt_config(spec) -> GPTConfig:
    return GPTConfig(width=spec.width, layers=spec.layers, heads=spec.heads, context=spec.context)


def _build(spec):
    """The built-in GPT (fresh, from the global seed) or a Hugging Face folder's model (its weights)."""
    if spec.hf is not None:
        from compress.lm.hf import load_hf

        return load_hf(spec.hf, spec.context)
    return GPT(_gpt_config(spec))


def _describe(spec, m) -> str:
    if spec.hf is not None:
        return (f"hf {spec.hf} ({m.cfg.model_type}), {m.cfg.layers} layers, context {spec.context}: "
                f"{_params(m):,} parameters")
    return (f"gpt width {spec.width}, {spec.layers} layers, {spec.heads} heads, context {spec.context}: "
            f"{_params(m):,} parameters")


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _load_weights(model: GPT, path: Path, recipe: LMRecipe, *key) -> GPT:
    from safetensors.torch import load_file

    if not path.exists():
        raise recipe.error_at(f"weights file {path} not found", *key)
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - shape mismatch, bad file: one clear message
        raise ModelError(f"{path}: weights do not fit {model.cfg}: {str(exc).splitlines()[0]}") from None
    return model.eval()


def validate(recipe: LMRecipe, output=None) -> list[str]:
    """Everything but training: the output folder, the data split, model shapes, weight files."""
    from compress.pipeline import output_dir

    out = output_dir(recipe, output)
    splits = load_text(recipe.data, recipe.seed)
    lines = [f"data: {recipe.data.source}, " + ", ".join(f"{k} {v['documents']} docs / {v['bytes']:,} bytes"
                                                         for k, v in splits.describe().items() if k != "digest")]
    for path, spec, cfg in model_specs(recipe):
        m = _build(spec)
        role = {"teacher": "teacher", "student": "student", "assistants": f"assistant {path[1]}"}.get(
            path[0], f"chain step {path[-1]} (stages[{path[1]}])")
        lines.append(f"{role}: {_describe(spec, m)}")
        if getattr(cfg, "weights", None):
            _load_weights(m, cfg.weights, recipe, path[0], "weights")
    lines.append(f"output: {out}")
    return lines


class _Run:
    def __init__(self, recipe: LMRecipe, out: Path, cache, quiet: bool, force: bool):
        self.recipe, self.out, self.quiet, self.force = recipe, out, quiet, force
        self.cache = cache  # compress.cache.Cache of the output root (verified entries)
        self.splits = load_text(recipe.data, recipe.seed)
        self.ctx = recipe.teacher.model.context
        self.timings: dict[str, float] = {}

    def train(self, what: str, model: GPT, key_parts: list, **kw) -> tuple[GPT, dict]:
        """Train (or reuse from the cache) ``model``; ``kw`` goes to ``train_lm``."""
        key = cache_key("lm-train", what.split()[0], model.cfg.as_dict(), self.splits.digest, self.recipe.seed, *key_parts)
        cached = self._cached(key, model)
        if cached is not None:
            say(f"{what}: reused from the cache", self.quiet)
            return cached
        with self.cache.claim("lm-train", key):
            cached = self._cached(key, model)  # another process may have trained it meanwhile
            if cached is not None:
                return cached
            t0 = time.perf_counter()
            budget: Budget = kw.pop("budget")
            with progress_bar(what, budget.steps, self.quiet, unit="step") as advance:
                info = train_lm(model, self.splits.train, budget, self.recipe.seed, what=what,
                                progress=lambda step, loss: advance(f"loss {loss:.3f}"), **kw)
            info["seconds"] = round(time.perf_counter() - t0, 1)
            # The validation split: a held-out check of every trained model that never touches the test bytes.
            val = eval_windows(self.splits.val, self.ctx, 8192)
            info["val_bits_per_byte"] = round(evaluate_lm(torch_logits(model), val).bits_per_byte, 4)
            import json

            self.cache.put_weights("lm-train", key, model, {"info.json": json.dumps(info, default=str).encode()})
        return model.eval(), info

    def _cached(self, key: str, model) -> tuple[GPT, dict] | None:
        import json

        from compress.cache import CorruptEntry

        got = self.cache.get_weights("lm-train", key, model)
        if got is None:
            return None
        try:
            info = json.loads(self.cache.get("lm-train", key).read_bytes("info.json"))
        except (CorruptEntry, AttributeError, KeyError, ValueError, RecursionError) as exc:
            self.cache.discard("lm-train", key, f"cache entry lm-train/{key}: info.json unreadable ({exc})")
            return None
        return got.eval(), {**info, "cached": True}


def _budget(st) -> Budget:
    return Budget(steps=st.steps, lr=st.lr, batch_size=st.batch_size, weight_decay=st.weight_decay)


def _sequences(r: _Run, teacher: GPT, teacher_key: str, st) -> tuple[np.ndarray, dict]:
    """The teacher's continuations of training prompts, cached on disk keyed by teacher + settings."""
    sc = st.sequence
    key = cache_key("lm-seq", teacher_key, sc.model_dump(), r.recipe.seed)
    entry = r.cache.get("lm-seq", key)
    if entry is not None:
        import io

        from compress.cache import CorruptEntry

        try:
            seq = np.load(io.BytesIO(entry.read_bytes("seq.npy")), allow_pickle=False)
            return seq, {"sequences": sc.samples, "cached": True, "file": str(entry.path("seq.npy"))}
        except (CorruptEntry, ValueError, OSError) as exc:
            r.cache.discard("lm-seq", key, f"cache entry lm-seq/{key}: seq.npy unreadable ({exc})")
    t0 = time.perf_counter()
    say(f"sequence-level KD: the teacher continues {sc.samples} training prompts of {sc.prompt} bytes "
        f"({'greedy' if sc.temperature == 0 else f'sampled, T={sc.temperature}'})", r.quiet)
    seq = teacher_continuations(teacher, r.splits.train, sc.samples, sc.prompt, sc.temperature, r.recipe.seed)
    entry = r.cache.put("lm-seq", key, {"seq.npy": lambda p: np.save(p, seq, allow_pickle=False)})
    return seq, {"sequences": sc.samples, "cached": False, "seconds": round(time.perf_counter() - t0, 1),
                 "file": str(entry.path("seq.npy"))}


def _distill(r: _Run, what: str, model, tutor, tutor_key: str, key: list, st) -> tuple[GPT, dict]:
    """One distill stage's training of ``model`` from ``tutor`` (token KD, its sequences, or both)."""
    seq, seq_info = (None, None)
    if st.level != "token":
        seq, seq_info = _sequences(r, tutor, tutor_key, st)
    model, info = r.train(what, model, key, budget=_budget(st), teacher=tutor, temperature=st.temperature,
                          alpha=st.alpha, sequences=seq, prompt_len=st.sequence.prompt, level=st.level)
    if seq_info:
        info["sequence_data"] = seq_info
    return model, info


def _chain(r: _Run, st, i: int, tutor, tutor_key: str) -> tuple[list[tuple[str, GPT]], list[dict], GPT, str]:
    """A distill stage's ``chain``: the teacher teaches chain[0] by the stage's settings, each step the next;
    returns the steps (for the report), their records and the last step with its cache identity."""
    steps, records = [], []
    for j, spec in enumerate(st.chain):
        torch.manual_seed(r.recipe.seed + 100 + j)
        name = f"assistant{j}"
        model, info = _distill(r, f"{name} distill", _build(spec), tutor, tutor_key,
                               [tutor_key, st.model_dump(), "chain", j], st)
        records.append({"stage": f"{i}:distill", "model": name, "config": st.model_dump(), "info": info})
        steps.append((name, model))
        tutor, tutor_key = model, cache_key("chain-id", tutor_key, st.model_dump(), j,
                                            *([model.cfg.as_dict()] if spec.hf else []))
    return steps, records, tutor, tutor_key


def _torch_stages(r: _Run, student: GPT, teacher: GPT, teacher_key: str, label: str, start_id: list | None = None
                  ) -> tuple[GPT, list[dict], int, list[tuple[str, GPT]]]:
    """Run distill / prune / finetune on ``student``; returns it, stage records, the training steps spent and the
    chain steps a distill stage's ``chain`` trained on the way (teacher -> chain -> ``student``). ``start_id``
    names the student's starting weights (their file digest) in every cache key."""
    records, steps, key, chained = [], 0, [teacher_key] + ([start_id] if start_id else []), []
    for i, st in enumerate(r.recipe.stages):
        if st.type == "distill":
            tutor, tutor_key = teacher, teacher_key
            if st.chain:
                chained, recs, tutor, tutor_key = _chain(r, st, i, teacher, teacher_key)
                records += recs
            key = key + [st.model_dump()]
            student, info = _distill(r, f"{label} distill", student, tutor, tutor_key, key, st)
            steps += st.steps
        elif st.type == "prune":
            from compress.lm.prune import prune_gpt

            before = _params(student)
            student, rows = prune_gpt(student, st.heads, st.mlp, st.importance)
            key = key + [st.model_dump()]
            info = {"params_before": before, "params_after": _params(student),
                    "tables": [{"title": f"{label}: heads and MLP hidden units kept per layer",
                                "columns": ["layer", "heads", "mlp hidden"], "rows": rows}]}
        elif st.type == "finetune":
            key = key + [st.model_dump()]
            student, info = r.train(f"{label} finetune", student, key, budget=_budget(st),
                                    teacher=teacher if st.distill else None, temperature=st.temperature, alpha=st.alpha)
            steps += st.steps
        else:
            break
        records.append({"stage": f"{i}:{st.type}", "model": label, "config": st.model_dump(), "info": info})
    return student, records, steps, chained


def _quantize_within(r: _Run, src: Path, dst: Path, st, i: int) -> dict:
    """``max_bpb_increase``: per-layer sensitivity and fp32 exclusion on the validation split (compress.lm.quantize)."""
    from compress.lm.quantize import quantize_within

    val = eval_windows(r.splits.val, r.ctx, r.recipe.eval.max_tokens)
    say(f"quantize ({st.mode}, max_bpb_increase {st.max_bpb_increase:g}): scoring files on {val[:, 1:].size:,} "
        "validation bytes", r.quiet)
    info = quantize_within(src, dst, st.mode, st.max_bpb_increase, val, block_size=st.block_size,
                           accuracy_level=st.accuracy_level, per_channel=st.per_channel, fallback=st.fallback)
    if not info["budget_met"]:
        say(f"[yellow]warning: quantize (stages[{i}], {st.mode}): no file met max_bpb_increase {st.max_bpb_increase:g} "
            f"on validation; kept the best one found ({len(info[st.fallback + '_layers'])} layer(s) {st.fallback}, "
            f"{info['val_bpb_increase']:+.4f} bits/byte), see report.md[/yellow]", r.quiet)
    return info


def _quantize_auto(r: _Run, src: Path, dst: Path, st) -> dict:
    """``block_size`` / ``accuracy_level: auto``: every INT4 setting scored and timed on validation (compress.lm.quantize)."""
    from compress.lm.quantize import INT4_BLOCKS, INT4_LEVELS, choose_int4

    blocks = INT4_BLOCKS if st.block_size == "auto" else (st.block_size,)
    levels = INT4_LEVELS if st.accuracy_level == "auto" else (st.accuracy_level,)
    val, b = eval_windows(r.splits.val, r.ctx, r.recipe.eval.max_tokens), r.recipe.bench
    say(f"quantize (int4_weight_only, {len(blocks) * len(levels)} settings): scoring and timing on validation", r.quiet)
    info = choose_int4(src, dst, val, val[:1, :b.prompt], blocks=blocks, levels=levels, budget=st.budget,
                       per_channel=st.per_channel, fallback=st.fallback, new_tokens=b.new_tokens, rounds=b.rounds,
                       calls=b.calls, seed=r.recipe.seed)
    say(f"quantize: INT4 block {info['block_size']}, accuracy_level {info['accuracy_level']} chosen", r.quiet)
    return info


def run(recipe: LMRecipe, output=None, quiet: bool = False, force: bool = False) -> dict:
    """Run the LM recipe into ``<output>/<name>/``; one run per output folder at a time (as the vision pipeline).

    Trained models (teacher, assistants, every distill / finetune, scratch) and the teacher's sequences
    are cached under ``<output>/.cache/lm`` as each finishes, so a rerun after Ctrl-C retrains only the
    model that was interrupted; ``force`` retrains everything.
    """
    from compress._io import publish, staging
    from compress.pipeline import exclusive, output_cache, output_dir, refuse_planted_links, relocate

    out = output_dir(recipe, output)
    with exclusive(out), staging(out) as staged:  # published only once complete: a failure keeps the last run's files
        refuse_planted_links(out, OWNED)
        report = _run(recipe, staged, output_cache(out, force), quiet, force)
        report = relocate(report, staged, out)
        from compress.lm import report as lmreport

        lmreport.write(report, staged, final=out)
        publish(staged, out, OWNED)
    if not quiet:
        lmreport.print_table(report)
    return report


# Names an LM run writes in its folder (compress._io.publish).
OWNED = ("teacher.onnx", "student*.onnx", "student-hf", "report.json", "report.md", "report.png")


def _run(recipe: LMRecipe, out: Path, cache, quiet: bool, force: bool) -> dict:
    from compress.lm import report as lmreport

    t_start = time.perf_counter()
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    r = _Run(recipe, out, cache, quiet, force)
    split = r.splits.describe()
    say(f"data: {recipe.data.source}: " + ", ".join(f"{k} {v['documents']} docs / {v['bytes']:,} B"
                                                    for k, v in split.items() if k != "digest"), quiet)
    test_w = eval_windows(r.splits.test, r.ctx, recipe.eval.max_tokens)
    torch.manual_seed(recipe.seed)

    # Hugging Face folders load before any training, so a bad one fails before compute.
    hf = {role: _build(cfg.model) for role, cfg in [("teacher", recipe.teacher), ("student", recipe.student),
                                                     *[(f"assistant{i}", a) for i, a in enumerate(recipe.assistants)]]
          if cfg.model.hf is not None}

    # --- teacher -----------------------------------------------------------------------------------
    teacher = hf.get("teacher") or GPT(_gpt_config(recipe.teacher.model))
    if recipe.teacher.weights:
        teacher = _load_weights(teacher, recipe.teacher.weights, recipe, "teacher", "weights")
        # keyed by the file's bytes, not its path: a weights file edited in place must not reuse stale students
        t_info = {"weights": str(recipe.teacher.weights)}
        t_key = ["teacher-weights", sha256_file(recipe.teacher.weights), teacher.cfg.as_dict()]
    elif "teacher" in hf and "train" not in recipe.teacher.model_fields_set:
        t_info = {"hf": str(recipe.teacher.model.hf), "note": "used as loaded (add teacher.train to fine-tune it first)"}
        t_key = ["teacher", teacher.cfg.as_dict()]
    else:
        tb = recipe.teacher.train
        # The architecture (and for a folder, its weights digest) is part of the teacher's identity: without it a
        # student distilled from another teacher with the same train settings came back from the cache.
        t_key = ["teacher", tb.model_dump(), teacher.cfg.as_dict()]
        teacher, t_info = r.train("teacher", teacher, t_key, budget=Budget(tb.steps, tb.lr, tb.batch_size, tb.weight_decay))
    t_key = cache_key("teacher-id", t_key)

    # --- progressive chain: teacher -> assistants -> student ------------------------------------------
    records: list[dict] = [{"stage": "teacher", "model": "teacher", "info": t_info}]
    chain_models: list[tuple[str, GPT]] = []
    tutor, tutor_key = teacher, t_key
    for i, a in enumerate(recipe.assistants):
        torch.manual_seed(recipe.seed + 100 + i)
        assistant = hf.get(f"assistant{i}") or GPT(_gpt_config(a.model))
        assistant, recs, _, _ = _torch_stages(r, assistant, tutor, tutor_key, f"assistant{i}")
        records += recs
        chain_models.append((f"assistant{i}", assistant))
        tutor, tutor_key = assistant, cache_key("assistant-id", tutor_key, i, a.model.model_dump(),
                                                *([assistant.cfg.as_dict()] if a.model.hf else []))

    # --- student ------------------------------------------------------------------------------------
    torch.manual_seed(recipe.seed + 1)
    student = hf.get("student") or GPT(_gpt_config(recipe.student.model))
    init_student = None if "student" in hf else copy.deepcopy(student.state_dict())
    student_id = None
    if recipe.student.weights:
        student = _load_weights(student, recipe.student.weights, recipe, "student", "weights")
        student_id = ["student-weights", sha256_file(recipe.student.weights)]  # part of every student stage's key
    student, recs, steps, chained = _torch_stages(r, student, tutor, tutor_key, "student", student_id)
    records += recs
    chain_models += chained
    if "student" in hf:
        from compress.lm.hf import save_hf

        folder = save_hf(student, out / "student-hf")
        records.append({"stage": "save", "model": "student", "info": {
            "folder": str(folder), "format": "Hugging Face save_pretrained (safetensors)",
            "files": sorted(p.name for p in folder.iterdir())}})

    # --- scratch: the student's architecture and initialisation, CE only, the same steps -----------------
    scratch = None
    first = next((st for st in recipe.stages if st.type in ("distill", "finetune")), None)
    if recipe.baseline == "scratch" and steps and first is not None:
        if "student" in hf:  # a folder's weights are pretrained: scratch is its config, freshly initialised
            from compress.lm.hf import fresh_like

            scratch = fresh_like(hf["student"], recipe.seed + 1)
            init_note = f"the student's config ({recipe.student.model.hf}) freshly initialised with seed {recipe.seed + 1}"
        else:
            scratch = GPT(_gpt_config(recipe.student.model))
            scratch.load_state_dict(init_student)
            init_note = "the student's architecture and initial weights"
        scratch, s_info = r.train("scratch", scratch, ["scratch", steps, first.lr, first.batch_size, first.weight_decay],
                                  budget=Budget(steps, first.lr, first.batch_size, first.weight_decay))
        records.append({"stage": "scratch", "model": "scratch", "info": {**s_info, "note": (
            f"{init_note}, trained with CE only for the student's {steps} steps "
            f"of {first.batch_size} windows at lr {first.lr}")}})

    # --- export and quantize --------------------------------------------------------------------------
    files: dict[str, Path] = {}
    export = next((st for st in recipe.stages if st.type == "export"), None)
    if export is not None:
        for name, model in (("teacher", teacher), ("student", student)):
            path = lmonnx.export_decoder(model, out / f"{name}.onnx", export.opset)
            par = lmonnx.parity(model, path, test_w)
            worst = max(par["max_abs_logits_full"], par["max_abs_logits_kv_cache"])
            if worst > export.tolerance:
                from compress.errors import StageError

                raise StageError(f"export: onnxruntime logits of {name} differ from torch by {worst:.2e} "
                                 f"(tolerance {export.tolerance})")
            files[name] = path
            records.append({"stage": "export", "model": name, "info": {**par, "file": str(path), "kv_cache": True}})
        for i, st in enumerate(recipe.stages):
            if st.type != "quantize":
                continue
            tag = "int8" if st.mode == "int8_dynamic" else f"int4-b{st.block_size}-a{st.accuracy_level}"
            if st.max_bpb_increase is not None:
                tag += f"-max{st.max_bpb_increase:g}" + ("-int8" if st.fallback == "int8" else "")
            dst = out / f"student-{tag}.onnx"
            if st.auto:
                info = _quantize_auto(r, files["student"], dst, st)
            elif st.max_bpb_increase is None:
                info = lmonnx.quantize_decoder(files["student"], dst, st.mode, block_size=st.block_size,
                                               accuracy_level=st.accuracy_level, per_channel=st.per_channel)
            else:
                info = _quantize_within(r, files["student"], dst, st, i)
            files[f"student-{tag}"] = dst
            if st.mode == "int8_dynamic" and info.get("reduce_range_cpu_advice"):
                info["notes"] = ["INT8 weights use the full 8-bit range: the shared int8_dynamic quantizer takes no "
                                 "reduce_range, although this CPU lacks VNNI (where u8s8 kernels can saturate); compare "
                                 "its test bits/byte with the fp32 student's in the table."]
            records.append({"stage": f"{i}:quantize", "model": f"student-{tag}", "info": info})

    # --- held-out evaluation ----------------------------------------------------------------------------
    say(f"scoring every model on {test_w[:, 1:].size:,} test bytes", quiet)
    t_score = evaluate_lm(torch_logits(teacher), test_w)
    models: list[dict] = []

    def add(name, role, score, params=None, file=None, fmt="torch"):
        entry = {"name": name, "role": role, "format": fmt, **score.as_dict(), "params": params,
                 "size_bytes": Path(file).stat().st_size if file else None, "file": str(file) if file else None}
        models.append(entry)

    add("teacher", "teacher", t_score, _params(teacher))
    t_score.agreement = 1.0
    models[0]["agreement"] = 1.0
    for name, m in chain_models:
        add(name, "assistant", evaluate_lm(torch_logits(m), test_w, t_score.top1), _params(m))
    if scratch is not None:
        add("scratch", "scratch", evaluate_lm(torch_logits(scratch), test_w, t_score.top1), _params(scratch))
    add("student", "student", evaluate_lm(torch_logits(student), test_w, t_score.top1), _params(student))
    for name, path in files.items():
        dec = lmonnx.OrtDecoder(path, threads=0)
        add(f"{name}.onnx", "onnx", evaluate_lm(dec.logits, test_w, t_score.top1),
            _params(teacher if name == "teacher" else student), path, "onnx")

    # --- generation benchmark ------------------------------------------------------------------------------
    bench = []
    if files:
        b = recipe.bench
        prompt = test_w[:1, :b.prompt]
        say(f"generation benchmark: {len(files)} files x 1 and {lmonnx.all_threads()} threads, interleaved", quiet)
        bench = lmonnx.bench_generation(files, prompt, b.new_tokens, threads=sorted({1, lmonnx.all_threads()}),
                                        rounds=b.rounds, calls=b.calls, seed=recipe.seed)

    # --- samples ---------------------------------------------------------------------------------------------
    samples = []
    s = recipe.samples
    rows = np.linspace(0, len(test_w) - 1, s.count).astype(int) if s.count else []
    gens = [("teacher", teacher), *chain_models, *([("scratch", scratch)] if scratch is not None else []), ("student", student)]
    for j in rows:
        prompt = test_w[j:j + 1, :s.prompt]
        entry = {"prompt": bytes(prompt[0].astype(np.uint8)).decode("utf-8", "replace"), "continuations": {}}
        for name, m in gens:
            cont = generate(m, torch.from_numpy(prompt), s.new_tokens)[0].numpy()
            entry["continuations"][name] = bytes(cont.astype(np.uint8)).decode("utf-8", "replace")
        for name, path in files.items():
            if name.startswith("student-"):
                cont = lmonnx.OrtDecoder(path).generate(prompt, s.new_tokens)[0]
                entry["continuations"][f"{name}.onnx"] = bytes(cont.astype(np.uint8)).decode("utf-8", "replace")
        samples.append(entry)

    report = lmreport.build(recipe, split, models, records, bench, samples, time.perf_counter() - t_start)
    report["warnings"] = list(cache.warnings)
    return report
