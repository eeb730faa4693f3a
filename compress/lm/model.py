"""A small GPT-style decoder (pre-LayerNorm, learned positions, untied head), byte vocabulary.

Attention has explicit ``q``/``k``/``v``/``o`` Linear layers and a per-layer head count, and the MLP a
per-layer hidden size, so whole heads and hidden units can be sliced out (``compress.stages.lm_prune``) and
the decoder can run with a key/value cache (``past`` in, ``present`` out), which the ONNX export keeps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GPTConfig", "GPT", "generate", "next_token", "causal_mask"]


@dataclass(frozen=True)
class GPTConfig:
    width: int = 128
    layers: int = 2
    heads: int = 4
    context: int = 128
    vocab: int = 256
    mlp_ratio: int = 4
    head_dim: int | None = None  # default width // heads
    layer_heads: tuple[int, ...] = field(default=())  # per layer, after head pruning (default: heads)
    layer_hidden: tuple[int, ...] = field(default=())  # per layer, after MLP pruning (default: mlp_ratio * width)

    @property
    def dim(self) -> int:
        return self.head_dim or self.width // self.heads

    def heads_of(self, i: int) -> int:
        return self.layer_heads[i] if self.layer_heads else self.heads

    def hidden_of(self, i: int) -> int:
        return self.layer_hidden[i] if self.layer_hidden else self.mlp_ratio * self.width

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, dim: int):
        super().__init__()
        self.heads, self.dim = heads, dim
        self.q = nn.Linear(width, heads * dim)
        self.k = nn.Linear(width, heads * dim)
        self.v = nn.Linear(width, heads * dim)
        self.o = nn.Linear(heads * dim, width)

    def forward(self, x, mask, shape, past_k=None, past_v=None):
        """``mask``: (t, past + t) bool, True where a key is hidden (``causal_mask``); ``shape``: (batch, t)."""
        b, t = shape
        split = lambda y: y.view(b, t, self.heads, self.dim).transpose(1, 2)  # noqa: E731 - (b, heads, t, dim)
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        if past_k is not None:
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.dim)
        y = F.softmax(scores.masked_fill(mask, float("-inf")), dim=-1) @ v
        return self.o(y.transpose(1, 2).reshape(b, t, self.heads * self.dim)), k, v


def causal_mask(t: int, p: int, device=None) -> torch.Tensor:
    """(t, p + t) bool: query i (at position p + i) must not see key j when j > p + i. Built once per forward and
    shared by every layer: in the exported decoder that is one Range/Greater instead of one per layer."""
    qi = torch.arange(t, device=device).unsqueeze(1) + p
    kj = torch.arange(p + t, device=device).unsqueeze(0)
    return kj > qi


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(width, hidden)
        self.proj = nn.Linear(hidden, width)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, dim: int, hidden: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, heads, dim)
        self.mlp = MLP(width, hidden)

    def forward(self, x, mask, shape, past_k=None, past_v=None):
        a, k, v = self.attn(self.ln1(x), mask, shape, past_k, past_v)
        x = x + a
        return x + self.mlp(self.ln2(x)), k, v


class GPT(nn.Module):
    """``forward(idx, past=None) -> (logits, present)``; ``past``/``present``: one (key, value) pair per layer,
    each (batch, heads, positions, head_dim)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.width % cfg.heads and cfg.head_dim is None:
            raise ValueError(f"width {cfg.width} is not divisible by heads {cfg.heads}")
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab, cfg.width)
        self.pos = nn.Embedding(cfg.context, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads_of(i), cfg.dim, cfg.hidden_of(i)) for i in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.vocab, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2 * layers)
            if name.endswith(("attn.o.weight", "mlp.proj.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.layers))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx, past=None):
        b, t = idx.shape
        p = 0 if past is None else past[0][0].shape[2]
        pos = torch.arange(t, device=idx.device) + p
        x = self.tok(idx) + self.pos(pos)
        # The mask and the (batch, t) of every head split come from the inputs once, not from each layer's tensors:
        # per-layer shape and mask bookkeeping was a fifth of an exported (optimized) decode step's nodes.
        mask = causal_mask(t, p, idx.device)
        present = []
        for i, block in enumerate(self.blocks):
            pk, pv = (None, None) if past is None else past[i]
            x, k, v = block(x, mask, (b, t), pk, pv)
            present.append((k, v))
        return self.head(self.ln_f(x)), present

    def empty_past(self, batch: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.zeros(batch, self.cfg.heads_of(i), 0, self.cfg.dim),) * 2 for i in range(self.cfg.layers)]


@torch.no_grad()
def generate(model: GPT, prompt: torch.Tensor, new_tokens: int, *, temperature: float = 0.0,
             gen: torch.Generator | None = None) -> torch.Tensor:
    """Only the ``new_tokens`` (batch, new_tokens) continuing ``prompt`` (batch, t) with the KV cache; greedy when
    temperature is 0."""
    model.eval()
    if prompt.shape[1] + new_tokens > model.cfg.context:
        raise ValueError(f"prompt ({prompt.shape[1]}) + new tokens ({new_tokens}) exceed the context ({model.cfg.context})")
    logits, past = model(prompt)
    out = []
    for _ in range(new_tokens):
        nxt = next_token(logits[:, -1], temperature, gen)
        out.append(nxt)
        logits, past = model(nxt, past)
    return torch.cat(out, dim=1)


def next_token(last: torch.Tensor, temperature: float, gen: torch.Generator | None) -> torch.Tensor:
    """(batch, 1) next tokens from the last position's logits: sampled at ``temperature``, greedy at 0."""
    if temperature > 0:
        return torch.multinomial(F.softmax(last / temperature, dim=-1), 1, generator=gen)
    return last.argmax(-1, keepdim=True)
