"""Hugging Face causal LMs from a local folder, standing wherever the LM pipeline uses its built-in GPT (``compress[hf]``).

The contract is byte-level: the pipeline's tokens are bytes 0..255, so a folder's ``config.vocab_size`` must be
exactly 256, with id i = byte i. A larger vocabulary is refused rather than sliced: its first 256 ids are not the
bytes in the same order (GPT-2's byte-level BPE permutes them, ByT5 shifts them by 3), so slicing would score and
distill the wrong distribution without any error. Token-level KD compares the two models' distributions id by id,
which needs a shared vocabulary; sequence-level distillation across different tokenizers is not built.

Folders load with ``local_files_only`` and ``use_safetensors``: no network, no pickles, no remote code.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from compress.cache import cache_key, sha256_file
from compress.errors import MissingExtraError, ModelError
from compress.lm.model import GPT, causal_mask

__all__ = ["have_transformers", "version_problem", "inspect_folder", "FolderInfo", "HFCausalLM", "load_hf",
           "fresh_like", "save_hf", "BYTE_VOCAB"]

BYTE_VOCAB = 256
INSTALL = "pip install 'compress[hf]'"


MIN_VERSION = (4, 56)  # DynamicCache(pairs, config=...) and cache.layers[i].keys/.values; tested: 4.56.0, 4.57.6, 5.24.0


def have_transformers() -> bool:
    return importlib.util.find_spec("transformers") is not None


def version_problem() -> str | None:
    """None when a usable transformers is installed, else what is wrong and the pip command."""
    if not have_transformers():
        return f"needs the optional package 'transformers': {INSTALL}"
    from importlib.metadata import version

    found = version("transformers")
    nums = tuple(int(p) for p in found.split(".")[:2] if p.isdigit())
    if nums < MIN_VERSION:
        return (f"needs transformers >= {'.'.join(map(str, MIN_VERSION))} (found {found}; its key/value cache API "
                f"differs): {INSTALL}")
    return None


def _quiet_transformers():
    import transformers

    transformers.utils.logging.set_verbosity_error()  # "bos_token_id outside the vocabulary", load reports
    transformers.utils.logging.disable_progress_bar()  # "Loading weights: 100%" on every load
    return transformers


@dataclass(frozen=True)
class FolderInfo:
    """What a folder's config.json and weight files say, read without building the model."""

    model_type: str
    vocab_size: int | None
    max_positions: int | None  # n_positions / max_position_embeddings; None when the config has neither
    weight_files: tuple[Path, ...]


def inspect_folder(path: Path) -> FolderInfo:
    """Check a model folder without loading weights: config.json parses, safetensors headers are whole.
    ``ModelError`` otherwise; the caller adds the recipe key."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"Hugging Face model folder {path} not found" if not path.exists()
                         else f"{path} is a file; hf: takes a folder written by save_pretrained (config.json + *.safetensors)")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} has no config.json; hf: takes a folder written by save_pretrained")
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path / 'config.json'} is not valid JSON ({exc})") from None
    if not have_transformers():
        raise MissingExtraError("model: {hf: ...}", "hf", "transformers")
    if problem := version_problem():
        raise ModelError(f"model: {{hf: ...}} {problem}")
    transformers = _quiet_transformers()
    try:
        cfg = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - unknown model_type, custom code, bad fields: one clear message
        raise ModelError(f"{path / 'config.json'}: transformers {transformers.__version__} cannot read it "
                         f"(model_type {raw.get('model_type')!r}): {str(exc).splitlines()[0]}") from None
    if type(cfg) not in transformers.MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ModelError(f"{path}: model_type {cfg.model_type!r} is not a causal LM (AutoModelForCausalLM has no class "
                         "for it); the LM pipeline needs a decoder that predicts the next token")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        other = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
        raise ModelError(f"{path} has no *.safetensors weights" + (
            f" (found {', '.join(other)}: pickled weights are not loaded; convert them with save_pretrained("
            "safe_serialization=True))" if other else ""))
    from safetensors import safe_open

    for f in files:
        try:
            with safe_open(str(f), "pt") as h:
                h.keys()
        except Exception as exc:  # noqa: BLE001 - SafetensorError: truncated, garbage
            raise ModelError(f"{f}: corrupt or truncated safetensors file ({exc})") from None
    positions = next((getattr(cfg, k) for k in ("n_positions", "max_position_embeddings")
                      if isinstance(getattr(cfg, k, None), int)), None)
    vocab = getattr(cfg, "vocab_size", None)
    return FolderInfo(cfg.model_type, vocab if isinstance(vocab, int) else None, positions, tuple(files))


@dataclass(frozen=True)
class HFConfig:
    """The part of a GPTConfig the pipeline reads (context, layers, cache shapes, cache-key identity)."""

    context: int
    layers: int
    kv_heads: tuple[int, ...]
    dim: int  # per head, as GPTConfig.dim
    model_type: str
    config: dict
    origin: str  # "folder weights <digest of their sha256s>" or "fresh init, seed N": part of the training cache key

    def heads_of(self, i: int) -> int:
        return self.kv_heads[i]

    def as_dict(self) -> dict:
        return {"hf": self.model_type, "context": self.context, "config": self.config, "origin": self.origin}


class HFCausalLM(nn.Module):
    """A Hugging Face causal LM with the built-in GPT's interface: ``forward(idx, past=None) -> (logits, present)``,
    ``past`` handed to the model as a ``DynamicCache`` and the updated cache read back."""

    def __init__(self, hf: nn.Module, context: int, origin: str):
        super().__init__()
        self.hf = hf
        self._cache_kw = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
        with torch.no_grad():
            was = hf.training
            hf.eval()
            _, present = self(torch.zeros(1, 1, dtype=torch.long))  # the cache's shapes, whatever the architecture
            hf.train(was)
        cfg = hf.config.to_dict()
        cfg.pop("transformers_version", None)
        self.cfg = HFConfig(context=context, layers=len(present), kv_heads=tuple(k.shape[1] for k, _ in present),
                            dim=present[0][0].shape[3], model_type=hf.config.model_type, config=cfg, origin=origin)

    def _cache(self, past):
        from transformers import DynamicCache

        return DynamicCache([(k, v) for k, v in past], config=self.hf.config)

    @staticmethod
    def _present(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
        layers = getattr(cache, "layers", None)
        if layers is None or any(not hasattr(layer, "keys") for layer in layers):
            raise ModelError(f"{type(cache).__name__}: not a key/value cache per layer (recurrent or hybrid models "
                             "are not supported by the LM pipeline)")
        return [(layer.keys, layer.values) for layer in layers]

    def forward(self, idx, past=None):
        b, t = idx.shape
        p = 0 if past is None else past[0][0].shape[2]
        # Our own additive causal mask and position ids, from tensor ops: a traced ONNX export then stays correct for
        # every prompt and past length instead of freezing the traced ones.
        dtype = next(self.hf.parameters()).dtype
        mask = torch.zeros(b, 1, t, p + t, dtype=dtype, device=idx.device).masked_fill(
            causal_mask(t, p, idx.device)[None, None], torch.finfo(dtype).min)
        pos = (torch.arange(t, device=idx.device) + p).unsqueeze(0).expand(b, t)
        kw = {self._cache_kw: self._cache(past)} if past is not None else {}
        out = self.hf(input_ids=idx, attention_mask=mask, position_ids=pos, use_cache=True, return_dict=True, **kw)
        cache = out["cache"] if "cache" in out else out.past_key_values  # 5.x renamed past_key_values to cache
        return out.logits, self._present(cache)

    empty_past = GPT.empty_past  # the same shapes, read from ``cfg``


def load_hf(path: Path, context: int) -> HFCausalLM:
    """Load a checked folder (see ``inspect_folder``) on CPU in fp32; ``ModelError`` when the weights do not load."""
    info = inspect_folder(path)
    transformers = _quiet_transformers()
    try:
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    except Exception as exc:  # noqa: BLE001 - missing tensors, shape mismatch, not a causal LM
        raise ModelError(f"{path}: AutoModelForCausalLM cannot load it: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    return HFCausalLM(hf.float().eval(), context, f"folder weights {cache_key(*map(sha256_file, info.weight_files))}")


def fresh_like(model: HFCausalLM, seed: int) -> HFCausalLM:
    """The same architecture (config) with fresh weights, initialised by transformers under ``seed``."""
    transformers = _quiet_transformers()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        hf = transformers.AutoModelForCausalLM.from_config(model.hf.config).float()
    return HFCausalLM(hf, model.cfg.context, f"fresh init, seed {seed}")


def save_hf(model: HFCausalLM, dst: Path) -> Path:
    """``save_pretrained`` (safetensors) into a temporary folder beside ``dst``, then renamed into place."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    old = None
    try:
        model.hf.save_pretrained(str(tmp), safe_serialization=True)
        if dst.exists():
            old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
            os.replace(dst, old)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not dst.exists():
            os.replace(old, dst)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dst
