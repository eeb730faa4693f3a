"""The language-model task: what compress.pipeline asks of a task, for ``task: lm`` recipes.

Every number is measured from the exported files themselves, on the test split's documents (never trained on).
The stage loop, cache, resume, report writer and gate are the pipeline's, shared with classification.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from compress._progress import say
from compress.artifact import Artifact
from compress.cache import cache_key, sha256_file
from compress import report as reporting
from compress.lm import report as lmreport
from compress.lm.context import LMContext
from compress.lm.data import TextSplits, eval_windows, load_text
from compress.lm.model import GPT, GPTConfig
from compress.lm.recipe import LMRecipe, model_specs
from compress.lm.spec import build_lm, describe_lm, params
from compress.stages.base import stages_for

__all__ = ["LMTask", "LMPrepared", "METRIC"]

METRIC = ("bits_per_byte", False)  # (name, higher is better)
DECODE_TOKENS = 16  # greedy tokens per timed call of compress check's latency ratio


@dataclass
class LMPrepared:
    splits: TextSplits
    teacher: torch.nn.Module
    student: torch.nn.Module  # its initial weights (the scratch baseline starts from them too)
    hf: dict = field(default_factory=dict)  # role -> a loaded Hugging Face model
    export: tuple[int, float] = (17, 1e-3)  # opset, parity tolerance (the recipe's export stage, if any)

    @property
    def fingerprint(self) -> str:
        return self.splits.digest


def _positions(path: Path) -> int | None:
    """The positions a decoder file can take: the rows of its learned position table (a 2-D initializer gathered by
    something other than ``input_ids``), or None when it has none (rotary positions)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    tables = {i.name: list(i.dims) for i in graph.initializer if len(i.dims) == 2}
    rows = [tables[n.input[0]][0] for n in graph.node
            if n.op_type == "Gather" and n.input[0] in tables and n.input[1] != "input_ids"]
    return min(rows, default=None)


class LMTask:
    name = "lm"
    metric = METRIC

    # --- before any compute ---------------------------------------------------------------------------

    def prepare(self, recipe: LMRecipe) -> LMPrepared:
        """Data, every model built (Hugging Face folders loaded, weights files read): a bad file fails here."""
        if recipe.threads:
            torch.set_num_threads(recipe.threads)
        splits = recipe.load_data(load_text)
        hf = {role: build_lm(cfg.model) for role, cfg in (("teacher", recipe.teacher), ("student", recipe.student))
              if cfg.model.hf is not None}
        torch.manual_seed(recipe.seed)
        teacher = recipe.with_weights("teacher", hf.get("teacher") or build_lm(recipe.teacher.model))
        torch.manual_seed(recipe.seed + 1)
        student = recipe.with_weights("student", hf.get("student") or build_lm(recipe.student.model))
        export = next((st for st in recipe.stages if st.type == "export"), None)
        return LMPrepared(splits, teacher, student, hf, (export.opset, export.tolerance) if export else (17, 1e-3))

    def validate(self, recipe: LMRecipe, prep: LMPrepared) -> list[str]:
        lines = [f"data: {recipe.data.source}, {self.describe(prep)}"]
        for path, spec, _ in model_specs(recipe):
            role = {"teacher": "teacher", "student": "student", "assistants": f"assistant {path[1]}"}.get(
                path[0], f"chain step {path[-1]} (stages[{path[1]}])")
            m = {"teacher": prep.teacher, "student": prep.student}.get(path[0]) or build_lm(spec)
            lines.append(f"{role}: {describe_lm(spec, m)}")
        return lines

    def describe(self, prep: LMPrepared) -> str:
        return ", ".join(f"{k} {v['documents']} docs / {v['bytes']:,} B" for k, v in prep.splits.describe().items()
                         if k != "digest")

    # --- the models the loop starts from ----------------------------------------------------------------

    def teacher_key(self, recipe: LMRecipe, prep: LMPrepared) -> str:
        if recipe.teacher.weights:  # keyed by the file's bytes, not its path: an edited file must not reuse students
            return cache_key("teacher-weights", sha256_file(recipe.teacher.weights), prep.teacher.cfg.as_dict())
        if self._teacher_as_loaded(recipe, prep):
            return cache_key("teacher", prep.teacher.cfg.as_dict())
        # The architecture (and for a folder, its weights digest) is part of the teacher's identity.
        return self._train_key(recipe, prep, "teacher", prep.teacher, recipe.teacher.train.model_dump())

    @staticmethod
    def _teacher_as_loaded(recipe: LMRecipe, prep: LMPrepared) -> bool:
        return "teacher" in prep.hf and "train" not in recipe.teacher.model_fields_set

    @staticmethod
    def _train_key(recipe, prep, what: str, model, *parts) -> str:
        return cache_key("lm-train", what, model.cfg.as_dict(), prep.splits.digest, recipe.seed, *parts)

    def student_key(self, recipe: LMRecipe, prep: LMPrepared) -> str:
        return cache_key("lm-student", prep.student.cfg.as_dict(), recipe.seed, prep.splits.digest,
                         sha256_file(recipe.student.weights) if recipe.student.weights else None)

    def teacher(self, recipe: LMRecipe, prep: LMPrepared, cache, quiet: bool) -> Artifact:
        key, teacher = self.teacher_key(recipe, prep), prep.teacher
        if recipe.teacher.weights:
            info = {"weights": str(recipe.teacher.weights)}
        elif self._teacher_as_loaded(recipe, prep):
            info = {"hf": str(recipe.teacher.model.hf), "note": "used as loaded (add teacher.train to fine-tune it first)"}
        else:
            teacher, info = self.context(recipe, prep, None, Path("."), cache, quiet).train(
                "teacher", copy.deepcopy(teacher), key, recipe.teacher.train)
        return Artifact("teacher", "torch", teacher.eval(), params=params(teacher), key=key,
                        info={"spec": describe_lm(recipe.teacher.model, teacher), **info})

    def student(self, recipe: LMRecipe, prep: LMPrepared) -> Artifact:
        return Artifact("student", "torch", prep.student, params=params(prep.student), key=self.student_key(recipe, prep),
                        info={"spec": describe_lm(recipe.student.model, prep.student)})

    def assistants(self, recipe: LMRecipe, prep: LMPrepared) -> list[Artifact]:
        """The top-level chain teacher -> assistants[0] -> ... -> student: each runs every torch stage."""
        out = []
        for i, a in enumerate(recipe.assistants):
            torch.manual_seed(recipe.seed + 100 + i)
            model = build_lm(a.model)
            out.append(Artifact(f"assistant{i}", "torch", model, params=params(model),
                                key=cache_key("lm-assistant", i, model.cfg.as_dict(), recipe.seed, prep.splits.digest)))
        return out

    def scratch(self, recipe: LMRecipe, prep: LMPrepared, cache, quiet: bool) -> Artifact | None:
        """The student's architecture and initial weights (a folder: its config, freshly initialised), CE only, for
        the student's training steps with the first training stage's lr, batch size and weight decay."""
        trained = [st for st in recipe.stages if stages_for("lm")[st.type].trains]
        steps = sum(st.steps for st in trained)
        if recipe.baseline != "scratch" or not trained:
            return None
        first = trained[0]
        if "student" in prep.hf:
            from compress.lm.hf import fresh_like

            model = fresh_like(prep.hf["student"], recipe.seed + 1)
            init = f"the student's config ({recipe.student.model.hf}) freshly initialised with seed {recipe.seed + 1}"
        else:
            model, init = copy.deepcopy(prep.student), "the student's architecture and initial weights"
        key = self._train_key(recipe, prep, "scratch", model, steps, first.lr, first.batch_size, first.weight_decay,
                              self.student_key(recipe, prep))
        run = self.context(recipe, prep, None, Path("."), cache, quiet)
        model, info = run.train("scratch", model, key, first.model_copy(update={"steps": steps}))
        return Artifact("scratch", "torch", model, params=params(model), key=key, info={**info, "note": (
            f"{init}, trained with CE only for the student's {steps} steps of {first.batch_size} windows at lr {first.lr}")})

    # --- what the stage loop needs ------------------------------------------------------------------------

    @staticmethod
    def context(recipe, prep, tutor: Artifact | None, out_dir: Path, cache, quiet: bool,
                label: str = "student") -> LMContext:
        return LMContext(recipe=recipe, splits=prep.splits, teacher=tutor.model if tutor else None, out_dir=out_dir,
                         quiet=quiet, teacher_key=tutor.key if tutor else "", cache=cache, label=label)

    @staticmethod
    def template(prep: LMPrepared, src: Artifact):
        """A cached GPT is rebuilt from its recorded config (pruned heads and hidden sizes); a folder's model from
        the stage's input."""
        return lambda arch: GPT(GPTConfig.from_dict(arch)) if arch else src.model

    @staticmethod
    def arch(model) -> dict | None:
        return model.cfg.as_dict() if isinstance(model, GPT) else None

    @staticmethod
    def fresh(art: Artifact, prep: LMPrepared, seed: int) -> Artifact:
        return art  # no BatchNorm in a decoder

    @staticmethod
    def export(model, path: Path, prep: LMPrepared) -> None:
        from compress.stages.lm_export import export_checked

        export_checked(model, path, eval_windows(prep.splits.val, model.cfg.context, 4096), *prep.export, path.stem)

    @staticmethod
    def finish(recipe: LMRecipe, prep: LMPrepared, art: Artifact, measured: list[dict], final_files: dict,
               out_dir: Path) -> None:
        """A Hugging Face student is also saved as a folder (save_pretrained, safetensors) beside model.onnx."""
        if "student" in prep.hf and art.model is not None:
            from compress.lm.hf import save_hf

            folder = save_hf(art.model, out_dir / "student-hf")
            measured[-1]["info"]["hf_folder"] = {"folder": str(folder), "files": sorted(p.name for p in folder.iterdir())}

    # --- measurement -------------------------------------------------------------------------------------

    def measure(self, recipe: LMRecipe, prep: LMPrepared, measured: list[dict], cache, quiet: bool) -> tuple[list[dict], dict]:
        """Every file on the test split (bits/byte, perplexity, agreement with the teacher's file), the generation
        benchmark (all distinct files interleaved, at 1 and all threads) and greedy samples; cached by digests."""
        from compress.bench import cpu_info
        from compress.lm import onnx as lmonnx
        from compress.lm.train import evaluate_lm

        digest = {m["name"]: sha256_file(Path(m["path"])) for m in measured}
        key = cache_key("lm-eval", sorted(set(digest.values())), recipe.eval.model_dump(), recipe.bench.model_dump(),
                        recipe.samples.model_dump(), recipe.seed, prep.splits.digest, cpu_info())
        got = cache.get_json("eval", key)
        if not (isinstance(got, dict) and {"scores", "bench", "samples"} <= set(got)
                and set(digest.values()) <= set(got["scores"])):
            test = eval_windows(prep.splits.test, recipe.teacher.model.context, recipe.eval.max_tokens)
            files = {}  # one name per distinct file, the first that has it
            for m in measured:
                files.setdefault(digest[m["name"]], m)
            say(f"[bold]measuring[/bold] {len(files)} files on {test[:, 1:].size:,} test bytes", quiet)
            teacher = evaluate_lm(lmonnx.OrtDecoder(measured[0]["path"], threads=0).logits, test)
            scores = {d: evaluate_lm(lmonnx.OrtDecoder(m["path"], threads=0).logits, test, teacher.top1).as_dict()
                      for d, m in files.items()}
            b = recipe.bench
            say(f"generation benchmark: {len(files)} files x 1 and {lmonnx.all_threads()} threads, interleaved", quiet)
            rows = lmonnx.bench_generation({d: Path(m["path"]) for d, m in files.items()}, test[:1, :b.prompt],
                                           b.new_tokens, threads=sorted({1, lmonnx.all_threads()}), rounds=b.rounds,
                                           calls=b.calls, seed=recipe.seed)
            s = recipe.samples
            samples = []
            for j in np.linspace(0, len(test) - 1, s.count).astype(int):
                prompt = test[j:j + 1, :s.prompt]
                conts = {d: bytes(lmonnx.OrtDecoder(m["path"]).generate(prompt, s.new_tokens)[0].astype(np.uint8))
                         .decode("utf-8", "replace") for d, m in files.items()}
                samples.append({"prompt": bytes(prompt[0].astype(np.uint8)).decode("utf-8", "replace"), "by_file": conts})
            got = {"scores": scores, "bench": rows, "samples": samples}
            cache.put_json("eval", key, got)
        else:
            say(f"[dim]measurements: cached {key} (--force to measure again)[/dim]", quiet)
        # Every model's latency as search and the gate read it: decode time per token at 1 thread (its file's row).
        per_token = {r["model"]: {k: v if k == "calls" else v / r["new_tokens"] for k, v in r["decode_ms"].items()}
                     for r in got["bench"] if r["threads"] == 1}
        models = []
        for m in measured:
            sc, d = got["scores"][digest[m["name"]]], digest[m["name"]]
            models.append({**m, "path": str(m["path"]), "sha256": d, "size_bytes": Path(m["path"]).stat().st_size,
                           "format": "onnx", **sc, "agreement": 1.0 if m["role"] == "teacher" else sc["agreement"],
                           "latency_ms": per_token.get(d)})
        first = lmreport.first_names(models)
        bench = [{**r, "model": first[r["model"]]} for r in got["bench"]]
        samples = [{"prompt": smp["prompt"], "continuations": {first[d]: t for d, t in smp["by_file"].items()}}
                   for smp in got["samples"]]
        return models, {"bench": bench, "samples": samples}

    # --- the gate (compress check) ---------------------------------------------------------------------

    def remeasure(self, report: dict, final: Path) -> tuple[float | None, str]:
        """Test bits/byte of ``final`` from the recipe and corpus a report names; (None, why) when they cannot load."""
        from compress.lm import onnx as lmonnx
        from compress.lm.train import evaluate_lm
        from compress.recipe import recipe_and_data

        recipe, splits = recipe_and_data(report, load_text, "digest")
        if recipe is None:
            return None, splits
        test = eval_windows(splits.test, recipe.teacher.model.context, recipe.eval.max_tokens)
        score = evaluate_lm(lmonnx.OrtDecoder(final, threads=0).logits, test)
        return score.bits_per_byte, f"re-measured from {final.name} on the test split ({test[:, 1:].size:,} bytes)"

    @staticmethod
    def disagreement(report: dict) -> float:
        """Bits/byte of one file scored twice differ by float summation order only (~1e-6); a report that differs
        from its own file by more than a thousandth of a bit per byte was edited."""
        return 1e-3

    @staticmethod
    def timers(files: dict[str, Path], *, batch: int, threads: int) -> dict:
        """One call: ``DECODE_TOKENS`` greedy tokens with the KV cache after an 8-byte prompt (what an app waits for),
        fewer when the files' position table is shorter (a recipe's context may be as small as 8)."""
        from compress.lm import onnx as lmonnx

        limit = min(filter(None, (_positions(p) for p in files.values())), default=None)
        prompt_len, tokens = 8, DECODE_TOKENS
        if limit is not None and prompt_len + tokens > limit:
            prompt_len = max(1, min(prompt_len, limit // 4))
            tokens = max(1, limit - prompt_len)
        prompt = np.full((batch, prompt_len), ord(" "), np.int64)
        decoders = {name: lmonnx.OrtDecoder(path, threads=threads) for name, path in files.items()}
        return {name: (lambda dec=dec: dec.generate(prompt, tokens)) for name, dec in decoders.items()}

    # --- the report ----------------------------------------------------------------------------------------

    def report(self, recipe: LMRecipe, prep: LMPrepared, built, run_dir: Path, cache, quiet: bool) -> dict:
        models, extra = self.measure(recipe, prep, built.measured, cache, quiet)
        return reporting.build(recipe, prep.splits.describe(), models, built.stage_log, run_dir, METRIC,
                               **lmreport.sections(models, extra["bench"], extra["samples"]))

    markdown = staticmethod(lmreport.markdown)  # report.md, report.png and the terminal tables
    plot = staticmethod(lmreport.plot)
    print_table = staticmethod(lmreport.print_table)
