"""Accuracy-aware per-layer quantization of the decoder: ``quantize: {mode: ..., max_bpb_increase: 0.02}``.

The vision stage's search (``compress.quantization.search.accuracy_aware``) with bits per byte as the yardstick:
every file is scored on the VALIDATION split's windows against the fp32 student export; the test split is left
to the pipeline's final evaluation of the shipped file.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from compress._io import atomic_path
from compress.errors import StageError
from compress.quantization import backend
from compress.quantization.search import Candidate, Yardstick, accuracy_aware, choose

__all__ = ["BpbScore", "BpbScorer", "quantize_within", "choose_int4", "EPS_BPB", "INT4_BLOCKS"]

# Scores of the same file differ by float summation order only (~1e-7 bits/byte over 32k bytes): an
# increase this small is "no increase", so a budget of 0 is met by a lossless file.
EPS_BPB = 1e-6

INT4_BLOCKS = (32, 64, 128)


@dataclass(frozen=True)
class BpbScore:
    """One file on the validation split. ``drop`` is the name ``compress.quantization.search`` ranks and budgets
    by; here it is the bits/byte increase over the fp32 source (lower is better, negative: better than it)."""

    bits_per_byte: float
    drop: float
    logit_error: float  # mean squared logit difference to the source, relative to the source's mean square
    agreement: float  # top-1 next-byte prediction equal to the fp32 source's

    def within(self, budget: float) -> bool:
        return self.drop <= budget + EPS_BPB


class BpbScorer:
    """Bits/byte of ONNX decoders (onnxruntime, 1 thread) on ``windows`` (n, ctx + 1), against the fp32 ``ref``."""

    def __init__(self, ref: Path, windows: np.ndarray):
        self.windows = windows
        self.calls = 0
        self.ref_bits_per_byte, self.ref_logits = self._run(ref)
        self._top1 = self.ref_logits.argmax(-1)
        self._scale = float(np.mean(self.ref_logits.astype(np.float64) ** 2)) or 1.0

    def _run(self, path: Path) -> tuple[float, np.ndarray]:
        from compress.lm.onnx import OrtDecoder
        from compress.lm.train import evaluate_lm

        dec, chunks = OrtDecoder(path, threads=1), []

        def logits_fn(x):
            z = dec.logits(x)
            chunks.append(z)
            return z

        score = evaluate_lm(logits_fn, self.windows)
        return score.bits_per_byte, np.concatenate(chunks)

    def __call__(self, path: Path) -> BpbScore:
        self.calls += 1
        bpb, z = self._run(path)
        err = float(np.mean((z.astype(np.float64) - self.ref_logits) ** 2)) / self._scale
        return BpbScore(bpb, bpb - self.ref_bits_per_byte, err, float((z.argmax(-1) == self._top1).mean()))


def _builders(src: Path, mode: str, block_size: int, accuracy_level: int | None, per_channel: bool, names: list[str],
              fallback: str):
    """(build_only(layer, path), build_excl(kept_names, path)) writing one quantized file per plan; the kept
    layers are fp32, or INT8 dynamic inside the INT4 file with ``fallback='int8'``."""
    if mode == "int8_dynamic":
        return (lambda layer, p: backend.int8_dynamic(src, p, per_channel=per_channel, only=[layer.name]),
                lambda fp32, p: backend.int8_dynamic(src, p, per_channel=per_channel, exclude=fp32))

    def only(layer, p):
        backend.int4(src, p, block_size=block_size, accuracy_level=accuracy_level, include=[layer.name])
        return p

    def excl(kept, p):
        int4 = p.with_name(p.stem + "-int4.onnx") if kept and fallback == "int8" else p
        backend.int4(src, int4, block_size=block_size, accuracy_level=accuracy_level,
                     include=[n for n in names if n not in kept])
        if int4 != p:  # quantize_dynamic leaves MatMulNBits alone and quantizes just the kept MatMuls
            backend.int8_dynamic(int4, p, per_channel=per_channel, only=list(kept))
        return p
    return only, excl


BPB = Yardstick("val bits/byte", lambda s: s.bits_per_byte, "{:.4f}".format, "{:+.4f} bits/byte".format, "increase",
                ("val_bits_per_byte", "val_bpb_increase"))


def quantize_within(src: Path, dst: Path, mode: str, budget: float, val_windows: np.ndarray, *, block_size: int = 32,
                    accuracy_level: int | None = None, per_channel: bool = True, fallback: str = "fp32",
                    scorer: BpbScorer | None = None) -> dict:
    """Quantize ``src`` into ``dst`` (``int8_dynamic`` or ``int4_weight_only``), keeping the most sensitive linear
    layers at ``fallback`` precision (fp32; int8 for int4_weight_only) until the validation bits/byte increase is
    within ``budget`` (compress.quantization.search.accuracy_aware); returns the report's info (``<fallback>_layers``
    lists the layers kept)."""
    what = "INT8" if mode == "int8_dynamic" else "INT4"
    if fallback not in ("fp32", "int8") or (fallback == "int8" and mode == "int8_dynamic"):
        raise ValueError(f"fallback {fallback!r} with mode {mode}: int8 is the fallback of int4_weight_only only")
    with tempfile.TemporaryDirectory(prefix="compress-lmq-") as wd:
        wd = Path(wd)
        # MatMulNBits and quantize_dynamic both rename a Gemm; as MatMul first, the names a plan uses hold
        source = wd / "src.onnx"
        onnx.save(backend.gemm_to_matmul(onnx.load(str(src))), str(source))
        layers = [layer for layer in backend.weighted_layers(source) if layer.linear]
        if not layers:
            raise StageError(f"quantize: {mode} found no MatMul with constant weights in the decoder")
        only, excl = _builders(source, mode, block_size, accuracy_level, per_channel, [la.name for la in layers], fallback)
        scorer = scorer or BpbScorer(src, val_windows)  # choose_int4's: the fp32 source is scored once
        chosen, info = accuracy_aware(layers, only, excl, scorer, budget, wd, "lm", what, BPB,
                                      fallback.upper() if fallback == "int8" else "fp32")
        with atomic_path(dst) as tmp:
            shutil.copyfile(chosen, tmp)
        final = scorer(dst)  # re-measured on the file that ships
    ops = [n.op_type for n in onnx.load(str(dst), load_external_data=False).graph.node]
    met = info["budget_met"]
    info.update(mode=mode, max_bpb_increase=budget, fallback=fallback, linear_layers=len(layers),
                source_val_bits_per_byte=round(scorer.ref_bits_per_byte, 5),
                quantized_layers=len(layers) - len(info[f"{fallback}_layers"]), budget_met=final.within(budget),
                val_bits_per_byte=round(final.bits_per_byte, 5), val_bpb_increase=round(final.drop, 5),
                val_agreement_with_fp32=round(final.agreement, 4), files_scored=scorer.calls,
                int8_matmuls=ops.count("MatMulInteger") + ops.count("DynamicQuantizeMatMul"),
                **({"per_channel": per_channel} if mode == "int8_dynamic" else
                   {"block_size": block_size, "accuracy_level": accuracy_level, "matmulnbits_nodes": ops.count("MatMulNBits")}))
    if met != info["budget_met"]:  # the copy should score as the chosen file did; the shipped file's score counts
        info["notes"].append(f"The shipped file re-scored {final.drop:+.6f} bits/byte on validation, on the other side "
                             "of the budget from the file the search chose (onnxruntime was not deterministic).")
    return info


def choose_int4(src: Path, dst: Path, val_windows: np.ndarray, prompt: np.ndarray, *, blocks, levels, budget: float,
                per_channel: bool = True, fallback: str = "fp32", new_tokens: int = 24, rounds: int = 8, calls: int = 2,
                seed: int = 0) -> dict:
    """``block_size`` / ``accuracy_level: auto``: INT4 with every (block, level) setting, each file scored on
    validation bits/byte and timed decoding with the KV cache at 1 thread, all in the same interleaved rounds
    beside the fp32 source. The fastest within ``budget`` wins (``compress.quantization.search.choose``: ties
    within 3 % go to the more accurate, then the smaller file); when none is within it, the most accurate. The
    winning setting ships through ``quantize_within``: every MatMul INT4 when that holds the budget on the shipped
    file, else the most sensitive MatMuls kept at ``fallback``."""
    from compress.bench import cpu_info
    from compress.lm.onnx import bench_generation, quantize_decoder

    with tempfile.TemporaryDirectory(prefix="compress-lmq-auto-") as wd:
        wd = Path(wd)
        ref = Candidate("fp32 (source, reference)", Path(src), eligible=False)
        settings, cands = {}, [ref]
        for b in blocks:
            for level in levels:
                c = Candidate(f"INT4 block {b}, accuracy_level {level}", wd / f"int4_b{b}_a{level}.onnx")
                quantize_decoder(src, c.path, "int4_weight_only", block_size=b, accuracy_level=level)
                settings[c.name] = (b, level)
                cands.append(c)
        scorer = BpbScorer(src, val_windows)
        for c in cands:
            c.score = scorer(c.path)
        rows = bench_generation({c.name: c.path for c in cands}, prompt, new_tokens, threads=[1], rounds=rounds,
                                calls=calls, seed=seed)
        speed = {r["model"]: r for r in rows}
        for c in cands:
            c.timing, c.size_bytes = speed[c.name]["decode_ms"], speed[c.name]["size_bytes"]
        winner, met = choose(cands, budget, fmt=BPB.delta)
        block, level = settings[winner.name]
        cpu = cpu_info()
        notes = [f"block_size / accuracy_level auto: {winner.name} "
                 + (f"is the fastest decoder within {budget:g} bits/byte of the fp32 export on validation."
                    if met else f"is the most accurate setting, but adds {winner.score.drop:+.4f} bits/byte, more than "
                                f"{budget:g}: the per-layer search below keeps the most sensitive MatMuls {fallback}."),
                 f"Timed on {cpu['model']} ({cpu['cores']} cores, features: {', '.join(cpu['features']) or 'none'}): "
                 f"{new_tokens} greedy tokens with the KV cache after a {prompt.shape[1]}-byte validation prompt, 1 "
                 f"thread, every file in the same {rounds} interleaved rounds after warm-up; the answer depends on the "
                 "CPU (VNNI makes accuracy_level 4's INT8 compute cheap)."]
        base = ref.timing["p50"]
        table = {"title": "INT4 settings measured (validation bits/byte; decode at 1 thread)",
                 "columns": ["candidate", "val bits/byte", "increase vs fp32", "decode p50 / p90 (ms)", "tokens/s",
                             "speed vs fp32", "size", "verdict"],
                 "rows": [[c.name, f"{c.score.bits_per_byte:.4f}", "-" if c is ref else f"{c.score.drop:+.4f}",
                           f"{c.timing['p50']:.2f} / {c.timing['p90']:.2f}", f"{speed[c.name]['tokens_per_s']:.0f}",
                           f"{base / c.timing['p50']:.2f}x", f"{c.size_bytes / 1e3:.1f} kB", c.verdict] for c in cands]}
        # The chosen setting, written and scored again as the file that ships (within the budget, every MatMul INT4;
        # else the most sensitive ones kept at ``fallback``).
        info = quantize_within(src, dst, "int4_weight_only", budget, val_windows, block_size=block, accuracy_level=level,
                               per_channel=per_channel, fallback=fallback, scorer=scorer)
    info.update(block_size=block, accuracy_level=level, setting_choice="auto", max_bpb_increase=budget,
                candidates=[{"name": c.name, "val_bits_per_byte": round(c.score.bits_per_byte, 5),
                             "decode_ms": c.timing, "size_bytes": c.size_bytes, "verdict": c.verdict} for c in cands])
    info["notes"] = notes + info["notes"]
    info["tables"] = [table] + info["tables"]
    return info
