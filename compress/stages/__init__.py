"""Stages, one file each. Adding a stage is one new file and one import line here."""

from compress.stages import distill, export, finetune, prune, quantize, train  # noqa: F401  (registers)
from compress.stages import qat  # noqa: F401  (registers; after quantize)
from compress.stages import lm_distill, lm_export, lm_finetune, lm_prune, lm_quantize  # noqa: F401  (task: lm)
from compress.stages.base import REGISTRY, STAGES, CheckContext, StageConfig, StageSpec, register_stage, stages_for

__all__ = ["STAGES", "REGISTRY", "CheckContext", "StageConfig", "StageSpec", "register_stage", "stages_for"]
