"""The language-model recipe (``task: lm``): same machinery and key names as vision recipes where the concept is
the same (``teacher``, ``student``, ``stages`` with ``distill``/``prune``/``export``/``quantize``, a distill stage's
``chain``; top-level ``assistants`` is the LM-only chain whose steps run every torch stage).

Budgets are in optimizer ``steps`` (each a batch of random context windows), not epochs: a step budget is
exact, and it is what "the scratch student gets the same budget" compares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import AliasChoices, Field, PrivateAttr, model_validator

from compress.errors import ChainError, RecipeError
from compress.recipe import SplitConfig, Strict, fmt_path, read_yaml, validate_schema

__all__ = ["LMRecipe", "load_lm_recipe", "parse_lm_recipe", "is_lm", "LM_STAGES", "check_hf_folders", "model_specs"]


class LMDataConfig(Strict):
    source: Literal["stdlib", "text"] = Field("stdlib", description="stdlib: the Python standard library's *.py files "
                                                                     "(built in); text: your .txt file or folder")
    path: Path | None = Field(None, description="text: a .txt file or a folder of .txt files")
    max_bytes: int = Field(2_000_000, ge=10_000, le=1_000_000_000, description="corpus cap (whole documents, sorted by name)")
    split: SplitConfig = SplitConfig(val=0.1, test=0.1)

    @model_validator(mode="after")
    def _path_when_needed(self):
        if self.source == "text" and self.path is None:
            raise ValueError("source 'text' needs a path (a .txt file or a folder of .txt files)")
        if self.source == "stdlib" and self.path is not None:
            raise ValueError("source 'stdlib' is built in and takes no path")
        return self


class LMModelSpec(Strict):
    arch: Literal["gpt"] | None = Field(None, description="built-in decoder")
    width: int = Field(128, ge=8, le=8192)
    layers: int = Field(2, ge=1, le=64)
    heads: int = Field(4, ge=1, le=128)
    context: int = Field(128, ge=8, le=8192)
    hf: Path | None = Field(None, description="a local Hugging Face causal-LM folder (save_pretrained, safetensors) "
                                              "with a 256-byte vocabulary (compress[hf])")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.arch is None) == (self.hf is None):
            raise ValueError("give exactly one of 'arch: gpt' (built in) or 'hf: path/to/folder'")
        shape = sorted({"width", "layers", "heads"} & self.model_fields_set)
        if self.hf is not None and shape:
            raise ValueError(f"{', '.join(shape)} come from the folder's config.json with 'hf:'; keep only "
                             "'hf' and 'context' (the window length)")
        if self.arch and self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        return self


class LMTrainConfig(Strict):
    steps: int = Field(300, ge=1, le=10_000_000, description="optimizer steps")
    lr: float = Field(3e-3, gt=0, le=10)
    batch_size: int = Field(32, ge=1, le=65_536, description="context windows per step")
    weight_decay: float = Field(0.0, ge=0)


class LMTeacherConfig(Strict):
    model: LMModelSpec
    train: LMTrainConfig = LMTrainConfig(steps=600)
    weights: Path | None = Field(None, description=".safetensors written by a previous run (teacher.safetensors)")


class LMStudentConfig(Strict):
    model: LMModelSpec
    weights: Path | None = None


class AssistantConfig(Strict):
    """One step of the progressive chain teacher -> assistants[0] -> ... -> student (Mirzadeh et al. 2020)."""

    model: LMModelSpec


class SequenceConfig(Strict):
    samples: int = Field(512, ge=1, le=1_000_000, description="teacher continuations generated (cached on disk)")
    prompt: int = Field(16, ge=1, le=8192, description="prompt bytes from the training split")
    temperature: float = Field(0.0, ge=0, le=10, description="0 = greedy; else sampled at this temperature")


class LMDistillConfig(Strict):
    type: Literal["distill"]
    level: Literal["token", "sequence", "both"] = Field("token", description="token: KL at every position; sequence: "
                                                        "CE on teacher continuations; both: half of each batch each way")
    temperature: float = Field(2.0, gt=0, le=100)
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the CE on the real next byte; 1 - alpha: T^2 * KL")
    steps: int = Field(300, ge=1, le=10_000_000)
    lr: float = Field(3e-3, gt=0, le=10)
    batch_size: int = Field(32, ge=1, le=65_536)
    weight_decay: float = Field(0.0, ge=0)
    sequence: SequenceConfig = SequenceConfig()
    chain: list[LMModelSpec] = Field(
        default_factory=list, validation_alias=AliasChoices("chain", "assistants"),
        description="progressive / teacher-assistant chain, largest first, as on the vision distill stage: the "
                    "teacher teaches chain[0] by this stage's settings, each step the next, the last the student")


class LMPruneConfig(Strict):
    type: Literal["prune"]
    heads: float = Field(0.0, ge=0, lt=1, description="fraction of attention heads removed per layer")
    mlp: float = Field(0.0, ge=0, lt=1, description="fraction of MLP hidden units removed per layer")
    importance: Literal["l2", "l1"] = Field("l2", description="weight-norm score of a head / hidden unit")

    @model_validator(mode="after")
    def _something(self):
        if self.heads == 0 and self.mlp == 0:
            raise ValueError("prune needs 'heads' and/or 'mlp' above 0")
        return self


class LMFinetuneConfig(Strict):
    type: Literal["finetune"]
    steps: int = Field(100, ge=1, le=10_000_000)
    lr: float = Field(1e-3, gt=0, le=10)
    batch_size: int = Field(32, ge=1, le=65_536)
    weight_decay: float = Field(0.0, ge=0)
    distill: bool = Field(True, description="token-level KD from the teacher (else CE only)")
    temperature: float = Field(2.0, gt=0, le=100)
    alpha: float = Field(0.5, ge=0, le=1)


class LMExportConfig(Strict):
    type: Literal["export"]
    opset: int = Field(17, ge=14, le=21)
    tolerance: float = Field(1e-3, gt=0, description="max |torch - onnxruntime| logits, with and without the KV cache")


# block_size / accuracy_level auto without max_bpb_increase: 0.02 bits/byte (under 1 % of a ~3 bits/byte student)
AUTO_BPB_BUDGET = 0.02


class LMQuantizeConfig(Strict):
    type: Literal["quantize"]
    mode: Literal["int8_dynamic", "int4_weight_only"] = "int4_weight_only"
    per_channel: bool = True
    block_size: Literal[32, 64, 128, "auto"] = Field(
        32, description="MatMulNBits block; auto = each of 32, 64, 128 measured, the fastest within the budget ships")
    accuracy_level: Literal[0, 1, 2, 3, 4, "auto"] | None = Field(
        4, description="MatMulNBits compute type: 4 = INT8 compute, 0 = default (fp32); auto = 0, 1, 2 and 4 measured "
                       "(validation bits/byte and decode speed at 1 thread), the fastest within the budget ships")
    max_bpb_increase: float | None = Field(
        None, ge=0, le=8, description="validation bits/byte the file may add over the fp32 student export (0.02 = "
                                      "two hundredths of a bit per byte); the most sensitive MatMuls stay fp32 until it "
                                      "holds. At most 8: a uniform guess over 256 bytes costs 8 bits/byte. "
                                      f"block_size/accuracy_level auto default to {AUTO_BPB_BUDGET}")
    fallback: Literal["fp32", "int8"] = Field(
        "fp32", description="with max_bpb_increase: the precision of the layers kept out of the mode (int8: INT8 "
                            "dynamic inside the INT4 file, for int4_weight_only)")

    @property
    def auto(self) -> bool:
        """INT4 settings chosen by measurement (block_size and/or accuracy_level ``auto``)."""
        return "auto" in (self.block_size, self.accuracy_level)

    @property
    def budget(self) -> float | None:
        return AUTO_BPB_BUDGET if self.max_bpb_increase is None and self.auto else self.max_bpb_increase


LM_STAGES = {c.model_fields["type"].annotation.__args__[0]: c
             for c in (LMDistillConfig, LMPruneConfig, LMFinetuneConfig, LMExportConfig, LMQuantizeConfig)}
_ACCEPTS = {"distill": "torch", "prune": "torch", "finetune": "torch", "export": "torch", "quantize": "onnx"}
_PRODUCES = {"distill": "torch", "prune": "torch", "finetune": "torch", "export": "onnx", "quantize": "onnx"}

LMStage = Annotated[Union[tuple(LM_STAGES.values())], Field(discriminator="type")]  # noqa: UP007


class LMEvalConfig(Strict):
    max_tokens: int = Field(65_536, ge=64, description="test bytes scored per model (non-overlapping context windows)")


class LMBenchConfig(Strict):
    prompt: int = Field(32, ge=1, description="prompt bytes for time to first token")
    new_tokens: int = Field(32, ge=1, description="greedy decode steps timed with the KV cache")
    rounds: int = Field(10, ge=3)
    calls: int = Field(2, ge=1)


class LMSamplesConfig(Strict):
    count: int = Field(2, ge=0, le=20, description="test-split prompts continued by every model in report.md")
    prompt: int = Field(48, ge=1)
    new_tokens: int = Field(64, ge=1)


class LMRecipe(Strict):
    task: Literal["lm"]
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)
    seed: int = 0
    data: LMDataConfig = LMDataConfig()
    teacher: LMTeacherConfig
    assistants: list[AssistantConfig] = Field(default_factory=list, description="progressive chain, largest first")
    student: LMStudentConfig
    stages: list[LMStage] = Field(min_length=1)  # type: ignore[valid-type]
    baseline: Literal["scratch", "none"] = "scratch"
    eval: LMEvalConfig = LMEvalConfig()
    bench: LMBenchConfig = LMBenchConfig()
    samples: LMSamplesConfig = LMSamplesConfig()
    threads: int = Field(0, ge=0, le=1024, description="torch threads for training (0 = torch's default, all cores); "
                                                       "1 is faster on a machine shared with other jobs")
    output: Path | None = None

    source_file: str | None = Field(None, exclude=True)
    _lines: dict = PrivateAttr(default_factory=dict)

    def error_at(self, message: str, *path) -> RecipeError:
        line = next((self._lines[path[:n]] for n in range(len(path), -1, -1) if path[:n] in self._lines), None)
        return RecipeError(message, self.source_file, line, fmt_path(path) or None)


def is_lm(data: Any) -> bool:
    return isinstance(data, dict) and data.get("task") == "lm"


def _check(recipe: LMRecipe, lines: dict) -> None:
    """Stage order (torch stages, export, then quantize), contexts that fit, one-off rules; before any compute."""
    produced, prev = "torch", "the student model"
    for i, st in enumerate(recipe.stages):
        if _ACCEPTS[st.type] != produced:
            raise ChainError(f"stage '{st.type}' cannot follow {prev}: '{st.type}' takes {_ACCEPTS[st.type]} models but "
                             f"{prev} produces {produced} models; put '{st.type}' "
                             f"{'after an export stage' if st.type == 'quantize' else 'before the export stage'}",
                             recipe.source_file, lines.get(("stages", i)), f"stages[{i}]")
        produced, prev = _PRODUCES[st.type], f"stage '{st.type}' (stages[{i}])"
        if st.type == "quantize":
            produced = "onnx"  # every quantize stage quantizes the fp32 export, so INT8 and INT4 sit side by side
    exports = [i for i, st in enumerate(recipe.stages) if st.type == "export"]
    if len(exports) > 1:
        raise RecipeError("only one export stage", recipe.source_file, lines.get(("stages", exports[1])), f"stages[{exports[1]}]")
    chains = [i for i, st in enumerate(recipe.stages) if st.type == "distill" and st.chain]
    if chains and recipe.assistants:
        raise recipe.error_at("give the progressive chain once: top-level 'assistants' (each runs every torch stage) or "
                              "a distill stage's 'chain' (each step distilled by that stage), not both",
                              "stages", chains[0], "chain")
    if len(chains) > 1:
        raise recipe.error_at("only one distill stage can carry a 'chain'", "stages", chains[1], "chain")
    prune = next((i for i, st in enumerate(recipe.stages) if st.type == "prune"), None)
    for path, spec, cfg in model_specs(recipe):
        if spec.hf is None:
            continue
        from compress.lm.hf import version_problem

        problem = version_problem()
        if problem:
            raise recipe.error_at(f"model: {{hf: ...}} {problem}", *path, "hf")
        if getattr(cfg, "weights", None) is not None:
            raise recipe.error_at("'weights' is for arch: gpt; an hf model's weights are the *.safetensors in its "
                                  "folder", *path[:-1], "weights")
        if prune is not None and path[0] in ("assistants", "student"):  # chain steps are distilled, never pruned
            raise recipe.error_at(f"stage 'prune' slices heads and MLP units of the built-in GPT; "
                                  f"{fmt_path(path[:-1])} is an hf model, which prune does not handle (use arch: gpt "
                                  "or drop the prune stage)", "stages", prune)
    t = recipe.teacher.model
    for path, spec, _ in model_specs(recipe)[1:]:
        if spec.context != t.context:
            raise recipe.error_at(f"context {spec.context} differs from the teacher's ({t.context}); distillation "
                                  "compares them window by window, so they must match", *path, "context")
    for i, st in enumerate(recipe.stages):
        if st.type == "quantize" and st.fallback == "int8" and (st.mode != "int4_weight_only" or st.budget is None):
            raise recipe.error_at("fallback int8 is for mode int4_weight_only with max_bpb_increase (the layers the "
                                  "search keeps out of INT4 become INT8); use fallback: fp32", "stages", i, "fallback")
        if st.type == "quantize" and st.mode != "int4_weight_only" and st.auto:
            key = "block_size" if st.block_size == "auto" else "accuracy_level"
            raise recipe.error_at(f"{key} auto chooses MatMulNBits settings, for mode int4_weight_only; "
                                  f"mode {st.mode} has none", "stages", i, key)
        if st.type == "distill" and st.level != "token" and st.sequence.prompt >= t.context:
            raise recipe.error_at(f"prompt ({st.sequence.prompt}) must be shorter than the context ({t.context})",
                                  "stages", i, "sequence", "prompt")
    if recipe.bench.prompt + recipe.bench.new_tokens + 1 > t.context:
        raise recipe.error_at(f"prompt + new_tokens ({recipe.bench.prompt} + {recipe.bench.new_tokens}) must fit the "
                              f"context ({t.context}) with one token to spare", "bench")
    if recipe.samples.prompt + recipe.samples.new_tokens > t.context:
        raise recipe.error_at(f"prompt + new_tokens ({recipe.samples.prompt} + {recipe.samples.new_tokens}) exceed the "
                              f"context ({t.context})", "samples")


def model_specs(recipe: LMRecipe) -> list[tuple[tuple, LMModelSpec, Any]]:
    """Every model of the recipe, teacher first: (key path of its model spec, the spec, the config holding it)."""
    out = [(("teacher", "model"), recipe.teacher.model, recipe.teacher)]
    out += [(("assistants", i, "model"), a.model, a) for i, a in enumerate(recipe.assistants)]
    out += [(("stages", i, "chain", j), spec, None) for i, st in enumerate(recipe.stages) if st.type == "distill"
            for j, spec in enumerate(st.chain)]
    return out + [(("student", "model"), recipe.student.model, recipe.student)]


def check_hf_folders(recipe: LMRecipe) -> None:
    """Every ``hf:`` folder: exists, config.json reads, safetensors are whole, vocabulary is the 256 bytes and
    the position table covers the teacher's context. Reads configs and headers only, before any compute."""
    from compress.errors import ModelError

    ctx = recipe.teacher.model.context
    for path, spec, _ in model_specs(recipe):
        if spec.hf is None:
            continue
        from compress.lm.hf import BYTE_VOCAB, inspect_folder

        key = (*path, "hf")
        try:
            info = inspect_folder(spec.hf)
        except ModelError as exc:
            raise recipe.error_at(str(exc), *key) from None
        if info.vocab_size != BYTE_VOCAB:
            raise recipe.error_at(
                f"{spec.hf} has vocab_size {info.vocab_size} ({info.model_type}); the LM pipeline is byte-level and "
                f"needs exactly {BYTE_VOCAB} (id i = byte i): token-level distillation compares teacher and student "
                "distributions token by token, so they must share one vocabulary, and the first 256 ids of a larger "
                "vocabulary are not the bytes in order. Sequence-level distillation across tokenizers is not built.",
                *key)
        if info.max_positions is not None and info.max_positions < ctx:
            raise recipe.error_at(f"{spec.hf} has {info.max_positions} positions ({info.model_type}), fewer than the "
                                  f"teacher's context ({ctx}); lower 'context' or use a model with more positions",
                                  *key)


def parse_lm_recipe(data: Any, file: str | None = None, lines: dict | None = None) -> LMRecipe:
    lines = lines or {}
    stages = data.get("stages") if isinstance(data, dict) else None
    for i, st in enumerate(stages if isinstance(stages, list) else []):
        if not isinstance(st, dict):
            raise RecipeError(f"a stage is a mapping with a 'type' (got {st!r})", file, lines.get(("stages", i)), f"stages[{i}]")
    recipe = validate_schema(LMRecipe, data, file, lines, LM_STAGES)
    recipe._lines = dict(lines)
    _check(recipe, lines)
    return recipe


def load_lm_recipe(path: str | Path) -> LMRecipe:
    """Read and validate a ``task: lm`` recipe; relative paths are relative to the recipe file."""
    path = Path(path)
    data, lines = read_yaml(path)
    recipe = parse_lm_recipe(data, str(path), lines)
    base = path.parent
    updates: dict = {}
    if recipe.data.path is not None and not recipe.data.path.is_absolute():
        updates["data"] = recipe.data.model_copy(update={"path": base / recipe.data.path})

    def rebase(cfg):
        upd = {}
        if getattr(cfg, "weights", None) is not None and not cfg.weights.is_absolute():
            upd["weights"] = base / cfg.weights
        if cfg.model.hf is not None and not cfg.model.hf.is_absolute():
            upd["model"] = cfg.model.model_copy(update={"hf": base / cfg.model.hf})
        return cfg.model_copy(update=upd) if upd else cfg

    for role in ("teacher", "student"):
        cfg = getattr(recipe, role)
        if rebase(cfg) is not cfg:
            updates[role] = rebase(cfg)
    if any(a.model.hf is not None for a in recipe.assistants):
        updates["assistants"] = [rebase(a) for a in recipe.assistants]

    def rebase_spec(spec: LMModelSpec) -> LMModelSpec:
        return spec.model_copy(update={"hf": base / spec.hf}) if spec.hf and not spec.hf.is_absolute() else spec

    if any(st.type == "distill" and any(c.hf for c in st.chain) for st in recipe.stages):
        updates["stages"] = [st.model_copy(update={"chain": [rebase_spec(c) for c in st.chain]})
                             if st.type == "distill" else st for st in recipe.stages]
    if updates:
        lines_ = recipe._lines
        recipe = recipe.model_copy(update=updates)
        recipe._lines = lines_
    check_hf_folders(recipe)
    return recipe
