"""``quantize`` for language models: INT8 dynamic or INT4 weight-only (MatMulNBits) of the fp32 decoder export.

A branch stage: quantize stages in a row all quantize the same fp32 export, so INT8 and INT4 sit side by side
(each keyed by that export, so editing one recomputes only it). ``max_bpb_increase`` keeps the most sensitive
MatMuls out of the mode until validation bits/byte holds; ``block_size``/``accuracy_level: auto`` measures
every INT4 setting (compress.lm.quantize)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from compress._progress import say, warn
from compress.artifact import Artifact
from compress.stages.base import StageConfig, register_stage

__all__ = ["LMQuantizeConfig", "AUTO_BPB_BUDGET"]

# block_size / accuracy_level auto without max_bpb_increase: 0.02 bits/byte (under 1 % of a ~3 bits/byte student)
AUTO_BPB_BUDGET = 0.02


class LMQuantizeConfig(StageConfig):
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

    # Field validators (not one model validator): a recipe error names the key itself (stages[2].fallback), with
    # its line. Every field they read is declared above the one they check.
    @field_validator("block_size", "accuracy_level")
    @classmethod
    def _auto_is_int4(cls, v, info: ValidationInfo):
        mode = info.data.get("mode")
        if v == "auto" and mode is not None and mode != "int4_weight_only":
            raise ValueError(f"{info.field_name} auto chooses MatMulNBits settings, for mode int4_weight_only; mode "
                             f"{mode} has none")
        return v

    @field_validator("fallback")
    @classmethod
    def _fallback(cls, v, info: ValidationInfo):
        d = info.data
        auto = "auto" in (d.get("block_size"), d.get("accuracy_level"))
        if v == "int8" and (d.get("mode") != "int4_weight_only" or (d.get("max_bpb_increase") is None and not auto)):
            raise ValueError("fallback int8 is for mode int4_weight_only with max_bpb_increase (the layers the search "
                             "keeps out of INT4 become INT8); use fallback: fp32")
        return v

    @property
    def tag(self) -> str:
        tag = "int8" if self.mode == "int8_dynamic" else f"int4-b{self.block_size}-a{self.accuracy_level}"
        if self.max_bpb_increase is not None:
            tag += f"-max{self.max_bpb_increase:g}" + ("-int8" if self.fallback == "int8" else "")
        return tag


@register_stage(LMQuantizeConfig, accepts={"onnx"}, produces="onnx", tasks=("lm",), branches=True)
def quantize(art: Artifact, cfg: LMQuantizeConfig, ctx) -> Artifact:
    from compress.lm import onnx as lmonnx
    from compress.lm.quantize import INT4_BLOCKS, choose_int4, quantize_within
    from compress.quantization.backend import INT4_LEVELS

    src, dst = art.path, ctx.stage_path("quantize", ".onnx")
    if cfg.auto:
        blocks = INT4_BLOCKS if cfg.block_size == "auto" else (cfg.block_size,)
        levels = INT4_LEVELS if cfg.accuracy_level == "auto" else (cfg.accuracy_level,)
        val, b = ctx.windows("val"), ctx.recipe.bench
        say(f"quantize (int4_weight_only, {len(blocks) * len(levels)} settings): scoring and timing on validation", ctx.quiet)
        info = choose_int4(src, dst, val, val[:1, :b.prompt], blocks=blocks, levels=levels, budget=cfg.budget,
                           per_channel=cfg.per_channel, fallback=cfg.fallback, new_tokens=b.new_tokens,
                           rounds=b.rounds, calls=b.calls, seed=ctx.recipe.seed)
        say(f"quantize: INT4 block {info['block_size']}, accuracy_level {info['accuracy_level']} chosen", ctx.quiet)
    elif cfg.max_bpb_increase is None:
        info = lmonnx.quantize_decoder(src, dst, cfg.mode, block_size=cfg.block_size, accuracy_level=cfg.accuracy_level,
                                       per_channel=cfg.per_channel)
    else:
        val = ctx.windows("val")
        say(f"quantize ({cfg.mode}, max_bpb_increase {cfg.max_bpb_increase:g}): scoring files on {val[:, 1:].size:,} "
            "validation bytes", ctx.quiet)
        info = quantize_within(src, dst, cfg.mode, cfg.max_bpb_increase, val, block_size=cfg.block_size,
                               accuracy_level=cfg.accuracy_level, per_channel=cfg.per_channel, fallback=cfg.fallback)
        if not info["budget_met"]:
            warn(f"quantize (stages[{ctx.stage_index}], {cfg.mode}): no file met max_bpb_increase "
                 f"{cfg.max_bpb_increase:g} on validation; kept the best one found "
                 f"({len(info[cfg.fallback + '_layers'])} layer(s) {cfg.fallback}, {info['val_bpb_increase']:+.4f} "
                 "bits/byte), see report.md")
    if cfg.mode == "int8_dynamic" and info.get("reduce_range_cpu_advice"):
        info["notes"] = ["INT8 weights use the full 8-bit range: the shared int8_dynamic quantizer takes no "
                         "reduce_range, although this CPU lacks VNNI (where u8s8 kernels can saturate); compare "
                         "its test bits/byte with the fp32 student's in the table."]
    # the torch student rides along (as on the vision quantize stage): a Hugging Face student is saved from it
    return art.derive("quantize", path=dst, info={**info, "tag": cfg.tag})
