"""ONNX export of the decoder with a KV cache, onnxruntime generation, INT8/INT4 quantization, the generation benchmark.

The exported graph: inputs ``input_ids`` (batch, seq) int64 and ``past_key_i`` / ``past_value_i`` (batch,
heads_i, past, head_dim) per layer; outputs ``logits`` (batch, seq, 256) and ``present_key_i`` /
``present_value_i`` (batch, heads_i, past + seq, head_dim). A prompt runs with empty past tensors
(past = 0), then each new token runs with the previous call's presents: one file does prefill and decode.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from compress._io import atomic_path
from compress.errors import StageError
from compress.lm.model import GPT

__all__ = ["export_decoder", "OrtDecoder", "parity", "quantize_decoder", "bench_generation"]


class _Flat(torch.nn.Module):
    """GPT with flat past/present tensors, the calling convention of the ONNX file."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids, *past_flat):
        logits, present = self.model(input_ids, list(zip(past_flat[::2], past_flat[1::2])))
        return (logits, *[t for kv in present for t in kv])


def export_decoder(model: GPT, path: Path, opset: int = 17) -> Path:
    """TorchScript-exporter ONNX with dynamic batch, sequence and past axes; written atomically."""
    model = model.eval()
    layers = model.cfg.layers
    past = [f"past_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    inputs, outputs = ["input_ids", *past], ["logits", *(n.replace("past", "present") for n in past)]
    ids = torch.zeros(1, 3, dtype=torch.long)
    dummy = [t for i in range(layers) for t in (torch.zeros(1, model.cfg.heads_of(i), 2, model.cfg.dim),) * 2]
    axes = {"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
    axes |= {n: {0: "batch", 2: "past"} for n in inputs[1:]}
    axes |= {n: {0: "batch", 2: "total"} for n in outputs[1:]}
    with atomic_path(path) as tmp, warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            # _Flat(...).eval(): the exporter restores the wrapper's training flag afterwards, and a fresh Module is in
            # training mode, which would leave dropout on in ``model`` (an HF model's) after the export.
            torch.onnx.export(_Flat(model).eval(), (ids, *dummy), str(tmp), dynamo=False, input_names=inputs,
                              output_names=outputs, dynamic_axes=axes, opset_version=opset, do_constant_folding=True)
        except Exception as exc:
            raise StageError(f"ONNX export of the decoder failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    return path


class OrtDecoder:
    """An onnxruntime session over an exported decoder: full-window logits, prefill/decode, greedy generation."""

    def __init__(self, path: str | Path, threads: int = 1):
        from compress.runtimes.onnxruntime import session

        self.path = Path(path)
        self.session = session(self.path, threads=threads)
        ins = self.session.get_inputs()
        self.past_names = [i.name for i in ins[1:]]
        self.past_shapes = [(int(i.shape[1]), int(i.shape[3])) for i in ins[1:]]  # (heads, head_dim)
        self.out_names = [o.name for o in self.session.get_outputs()]

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        return {n: np.zeros((batch, h, 0, d), np.float32) for n, (h, d) in zip(self.past_names, self.past_shapes)}

    def step(self, ids: np.ndarray, past: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        outs = self.session.run(self.out_names, {"input_ids": np.ascontiguousarray(ids, np.int64), **past})
        return outs[0], dict(zip(self.past_names, outs[1:]))

    def logits(self, x: np.ndarray) -> np.ndarray:
        return self.step(x, self.empty_past(len(x)))[0]

    def generate(self, prompt: np.ndarray, new_tokens: int) -> np.ndarray:
        """Greedy continuation (batch, new_tokens) of ``prompt`` (batch, t)."""
        logits, past = self.step(prompt, self.empty_past(len(prompt)))
        out = []
        for _ in range(new_tokens):
            nxt = logits[:, -1].argmax(-1)[:, None]
            out.append(nxt)
            logits, past = self.step(nxt, past)
        return np.concatenate(out, 1)


def parity(model: GPT, path: Path, windows: np.ndarray, steps: int = 4) -> dict:
    """Max |torch - onnxruntime| logits: a full window without cache, and token-by-token decoding with it."""
    dec = OrtDecoder(path)
    x = windows[:2, :-1]
    with torch.no_grad():
        ref, ref_past = model(torch.from_numpy(x))
    full = float(np.abs(dec.logits(x) - ref.numpy()).max())
    # KV cache: prefill all but the last `steps` tokens, then feed them one by one, compare with the full pass.
    split = x.shape[1] - steps
    logits, past = dec.step(x[:, :split], dec.empty_past(len(x)))
    worst = float(np.abs(logits - ref.numpy()[:, :split]).max())
    for j in range(split, x.shape[1]):
        logits, past = dec.step(x[:, j:j + 1], past)
        worst = max(worst, float(np.abs(logits[:, 0] - ref.numpy()[:, j]).max()))
    present = float(np.abs(past[dec.past_names[0]] - ref_past[0][0].numpy()).max())
    return {"max_abs_logits_full": full, "max_abs_logits_kv_cache": worst, "max_abs_present_key_0": present,
            "positions_compared": int(x.size)}


def quantize_decoder(src: Path, dst: Path, mode: str, *, block_size: int = 32, accuracy_level: int | None = None,
                     per_channel: bool = True, reduce_range: str | bool = "auto") -> dict:
    """INT8 dynamic (linear layers) or INT4 weight-only (MatMulNBits) with the vision pipeline's own functions."""
    from compress.quantization import backend

    import logging

    info: dict = {"mode": mode}
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)  # one line per node
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # onnxruntime logs "consider pre-processing" on the root logger
    with atomic_path(dst) as tmp, contextlib.redirect_stdout(io.StringIO()), contextlib.ExitStack() as stack:
        stack.callback(root.setLevel, level)
        if mode == "int8_dynamic":
            backend.int8_dynamic(src, tmp, per_channel=per_channel)
            ops = [n.op_type for n in onnx.load(str(tmp), load_external_data=False).graph.node]
            info.update(per_channel=per_channel, int8_matmuls=sum(o in ("MatMulInteger", "DynamicQuantizeMatMul") for o in ops),
                        reduce_range_cpu_advice=backend.reduce_range(reduce_range))
        else:
            n = backend.int4(src, tmp, block_size=block_size, accuracy_level=accuracy_level)
            if n == 0:
                raise StageError("quantize: int4_weight_only found no MatMul with constant weights in the decoder")
            info.update(block_size=block_size, accuracy_level=accuracy_level, matmulnbits_nodes=n)
    return info


def bench_generation(files: dict[str, Path], prompt: np.ndarray, new_tokens: int, *, threads: list[int],
                     rounds: int = 10, calls: int = 2, warmup: int = 2, seed: int = 0) -> list[dict]:
    """Time-to-first-token (prefill of ``prompt`` + first argmax) and decode tokens/s (``new_tokens`` greedy
    steps with the KV cache, from the prompt's cache) for every file at every thread count, all interleaved."""
    from compress.bench import Timing, time_rounds

    runners, meta = {}, {}
    for th in threads:
        for name, path in files.items():
            dec = OrtDecoder(path, threads=th)
            logits0, past0 = dec.step(prompt, dec.empty_past(len(prompt)))
            first = logits0[:, -1].argmax(-1)[:, None]

            def ttft(dec=dec):
                logits, _ = dec.step(prompt, dec.empty_past(len(prompt)))
                return logits[:, -1].argmax(-1)

            def decode(dec=dec, past0=past0, first=first):
                nxt, past = first, past0
                for _ in range(new_tokens):
                    logits, past = dec.step(nxt, past)
                    nxt = logits[:, -1].argmax(-1)[:, None]
                return nxt

            key = f"{name}@{th}"
            runners[key + "/ttft"], runners[key + "/decode"] = ttft, decode
            meta[key] = (name, th, dec.path.stat().st_size)
    samples = time_rounds(runners, rounds=rounds, calls=calls, warmup=warmup, seed=seed)
    rows = []
    for key, (name, th, size) in meta.items():
        t_first = Timing.of(samples[key + "/ttft"].ravel().tolist())
        t_dec = Timing.of(samples[key + "/decode"].ravel().tolist())
        rows.append({"model": name, "threads": th if th else os.cpu_count(), "size_bytes": size,
                     "ttft_ms": t_first.as_dict(), "decode_ms": t_dec.as_dict(),
                     "tokens_per_s": new_tokens / (t_dec.p50 / 1e3), "prompt_tokens": int(prompt.shape[1]),
                     "new_tokens": new_tokens})
    return rows


def all_threads() -> int:
    return os.cpu_count() or 1

