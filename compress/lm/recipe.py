"""The language-model recipe (``task: lm``): the same keys as a classification recipe where the concept is the same
(``teacher``, ``student``, ``stages`` with ``distill``/``prune``/``finetune``/``export``/``quantize``, a distill
stage's ``chain``; top-level ``assistants`` is the LM-only chain whose steps run every torch stage). The stages
are registered for ``tasks=("lm",)`` in compress/stages/lm_*.py.

Budgets are in optimizer ``steps`` (each a batch of random context windows), not epochs: a step budget is
exact, and it is what "the scratch student gets the same budget" compares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from compress import stages as _stages  # noqa: F401  (registers every stage)
from compress.config import RecipeBase, SplitConfig, Strict, check_chain
from compress.lm.spec import LMModelSpec
from compress.stages.base import LMTrainConfig, stages_for

__all__ = ["LMRecipe", "model_specs"]


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


LMStage = Annotated[Union[tuple(spec.config for spec in stages_for("lm").values())],  # noqa: UP007
                   Field(discriminator="type")]


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


class LMRecipe(RecipeBase):
    task: Literal["lm"]
    data: LMDataConfig = LMDataConfig()
    teacher: LMTeacherConfig
    assistants: list[AssistantConfig] = Field(default_factory=list, description="progressive chain, largest first")
    student: LMStudentConfig
    stages: list[LMStage] = Field(min_length=1)  # type: ignore[valid-type]
    eval: LMEvalConfig = LMEvalConfig()
    bench: LMBenchConfig = LMBenchConfig()
    samples: LMSamplesConfig = LMSamplesConfig()
    threads: int = Field(0, ge=0, le=1024, description="torch threads for training (0 = torch's default, all cores); "
                                                       "1 is faster on a machine shared with other jobs")

    def check(self) -> None:
        """Stage order, one export, one chain, contexts that match and fit, hf models usable; before any compute."""
        check_chain(self)
        types = [st.type for st in self.stages]
        if types.count("export") > 1:
            raise self.error_at("only one export stage", "stages", types.index("export", types.index("export") + 1))
        chains = [i for i, st in enumerate(self.stages) if st.type == "distill" and st.chain]
        if chains and self.assistants:
            raise self.error_at("give the progressive chain once: top-level 'assistants' (each runs every torch stage) "
                                "or a distill stage's 'chain' (each step distilled by that stage), not both",
                                "stages", chains[0], "chain")
        if len(chains) > 1:
            raise self.error_at("only one distill stage can carry a 'chain'", "stages", chains[1], "chain")
        from compress.lm.hf import version_problem

        t = self.teacher.model
        for path, spec, cfg in model_specs(self):
            if spec.hf is not None and (problem := version_problem()):
                raise self.error_at(f"model: {{hf: ...}} {problem}", *path, "hf")
            if spec.hf is not None and getattr(cfg, "weights", None) is not None:
                raise self.error_at("'weights' is for arch: gpt; an hf model's weights are the *.safetensors in its "
                                    "folder", *path[:-1], "weights")
            if spec.context != t.context:
                raise self.error_at(f"context {spec.context} differs from the teacher's ({t.context}); distillation "
                                    "compares them window by window, so they must match", *path, "context")
        if self.bench.prompt + self.bench.new_tokens + 1 > t.context:
            raise self.error_at(f"prompt + new_tokens ({self.bench.prompt} + {self.bench.new_tokens}) must fit the "
                                f"context ({t.context}) with one token to spare", "bench")
        if self.samples.prompt + self.samples.new_tokens > t.context:
            raise self.error_at(f"prompt + new_tokens ({self.samples.prompt} + {self.samples.new_tokens}) exceed the "
                                f"context ({t.context})", "samples")

    def check_files(self) -> None:
        """Every ``hf:`` folder: exists, config.json reads, safetensors are whole, vocabulary is the 256 bytes and
        the position table covers the teacher's context. Reads configs and headers only, before any compute."""
        from compress.errors import ModelError
        from compress.lm.hf import BYTE_VOCAB, inspect_folder

        ctx = self.teacher.model.context
        for path, spec, _ in model_specs(self):
            if spec.hf is None:
                continue
            key = (*path, "hf")
            try:
                info = inspect_folder(spec.hf)
            except ModelError as exc:
                raise self.error_at(str(exc), *key) from None
            if info.vocab_size != BYTE_VOCAB:
                raise self.error_at(
                    f"{spec.hf} has vocab_size {info.vocab_size} ({info.model_type}); the LM pipeline is byte-level "
                    f"and needs exactly {BYTE_VOCAB} (id i = byte i): token-level distillation compares teacher and "
                    "student distributions token by token, so they must share one vocabulary, and the first 256 ids of "
                    "a larger vocabulary are not the bytes in order. Sequence-level distillation across tokenizers is "
                    "not built.", *key)
            if info.max_positions is not None and info.max_positions < ctx:
                raise self.error_at(f"{spec.hf} has {info.max_positions} positions ({info.model_type}), fewer than the "
                                    f"teacher's context ({ctx}); lower 'context' or use a model with more positions",
                                    *key)


def model_specs(recipe: LMRecipe) -> list[tuple[tuple, LMModelSpec, Any]]:
    """Every model of the recipe, teacher first: (key path of its model spec, the spec, the config holding it)."""
    out = [(("teacher", "model"), recipe.teacher.model, recipe.teacher)]
    out += [(("assistants", i, "model"), a.model, a) for i, a in enumerate(recipe.assistants)]
    out += [(("stages", i, "chain", j), spec, None) for i, st in enumerate(recipe.stages) if st.type == "distill"
            for j, spec in enumerate(st.chain)]
    return out + [(("student", "model"), recipe.student.model, recipe.student)]

