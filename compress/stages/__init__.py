"""Stages, one file each. Adding a stage is one new file and one import line here."""

from compress.stages import distill, export, finetune, prune, quantize, train  # noqa: F401  (registers)
from compress.stages import qat  # noqa: F401  (registers; after quantize)
from compress.stages.base import STAGES, CheckContext, StageConfig, StageSpec, register_stage

__all__ = ["STAGES", "CheckContext", "StageConfig", "StageSpec", "register_stage"]
