"""Built-in architectures. Layers are named ``features.N`` and ``classifier`` so recipes can point at them."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

__all__ = ["ZOO", "cnn", "mlp", "transformer", "text_transformer", "Attention", "Tokens", "ByteTokens"]


GRID_1D = 4  # cells the 1-D cnn averages the sequence into (4, like the 2-D cnn's 2 x 2 grid)


def cnn(input_shape: tuple[int, ...], num_classes: int, width: int = 16, depth: int = 2) -> nn.Module:
    """conv3x3+BN+ReLU blocks with width * 2**i channels, a 2x2 max-pool after every second block,
    average pooling to a 2x2 grid and one linear classifier.

    The 2x2 grid (not global pooling) keeps coarse layout: a shallow student on 8x8 digits has a
    receptive field of 5x5 and loses ~7 accuracy points with global pooling (measured: 88.3 vs 96.7 %).

    >>> cnn((1, 8, 8), 10, width=16, depth=2)  # 16-32 channels, 6.1k params, 0.32M MACs

    Signal input C x L (e.g. MNIST-1D, 1 x 40) gets the same network in 1-D, pooled to GRID_1D cells of
    the sequence, so the layer names and the pruning and export paths are the same.
    """
    if len(input_shape) not in (2, 3):
        raise ValueError(f"arch 'cnn' needs image input C x H x W (got input shape {tuple(input_shape)}); use arch 'mlp'")
    conv, bn, pool, avg = ((nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d) if len(input_shape) == 2 else
                           (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d))
    c, *size = input_shape
    layers: list[nn.Module] = []
    for i in range(depth):
        out = width * 2 ** i
        layers += [conv(c, out, 3, padding=1, bias=False), bn(out), nn.ReLU(inplace=True)]
        c = out
        if i % 2 == 1 and i < depth - 1 and min(size) >= 2:
            layers.append(pool(2))
            size = [n // 2 for n in size]
    grid = min(GRID_1D, size[0]) if len(size) == 1 else (2 if min(size) >= 2 else 1)
    head = nn.Sequential(avg(grid), nn.Flatten())
    return _Net(nn.Sequential(*layers), head, nn.Linear(c * grid ** len(size), num_classes))


def mlp(input_shape: tuple[int, ...], num_classes: int, width: int = 128, depth: int = 2) -> nn.Module:
    """Flatten, then ``depth`` x (Linear+BN+ReLU) of ``width`` units, then a linear classifier."""
    f = math.prod(input_shape)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(f, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        f = width
    return _Net(nn.Sequential(*layers), nn.Flatten(), nn.Linear(f, num_classes), flatten_first=True)


class _Net(nn.Module):
    def __init__(self, features: nn.Sequential, pool: nn.Module, classifier: nn.Linear, flatten_first: bool = False):
        super().__init__()
        self.flatten_first = flatten_first
        self.features, self.pool, self.classifier = features, pool, classifier

    def forward(self, x):
        if self.flatten_first:
            x = x.flatten(1)
        return self.classifier(self.pool(self.features(x)))


def transformer(input_shape: tuple[int, ...], num_classes: int, width: int = 32, depth: int = 2, heads: int = 4,
                patch: int | None = None, mlp_ratio: int = 2) -> nn.Module:
    """A pre-norm ViT-style encoder: tokens, ``depth`` x (attention with ``heads`` heads + MLP of
    ``mlp_ratio * width`` hidden units), LayerNorm, mean over tokens, linear classifier.

    Image input C x H x W is cut into ``patch`` x ``patch`` patches (default 2 when H and W are even:
    16 tokens of 4 values for 8x8 digits); flat input of F features is F tokens of one value each.
    Layers: ``features.0`` embeds the tokens (``proj``, plus a learned position embedding),
    ``features.1..depth`` are the blocks (``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``),
    ``features.{depth+1}`` the final LayerNorm, then ``classifier``. Attention uses explicit Linears and
    matmuls (no fused kernels), so torch-pruning can remove whole heads and ONNX export is plain.

    >>> transformer((1, 8, 8), 10, width=32, depth=2, heads=4)  # 18.2k params, 0.27M MACs
    """
    if width % heads:
        raise ValueError(f"arch 'transformer': width {width} must be a multiple of heads {heads}")
    embed = Tokens(input_shape, width, patch)
    blocks = [_Block(width, heads, mlp_ratio * width) for _ in range(depth)]
    return _Net(nn.Sequential(embed, *blocks, nn.LayerNorm(width)), _TokenMean(), nn.Linear(width, num_classes))


class Tokens(nn.Module):
    """Input -> (batch, tokens, width): image patches or one token per feature, plus a position embedding."""

    def __init__(self, input_shape: tuple[int, ...], width: int, patch: int | None):
        super().__init__()
        self.input_shape = tuple(input_shape)
        if len(input_shape) == 3:
            c, h, w = input_shape
            self.patch = patch or (2 if h % 2 == 0 and w % 2 == 0 else 1)
            if h % self.patch or w % self.patch:
                raise ValueError(f"arch 'transformer': patch {self.patch} does not divide the image {h}x{w}")
            tokens, dim = (h // self.patch) * (w // self.patch), c * self.patch ** 2
        else:
            self.patch = None
            tokens, dim = math.prod(input_shape), 1
        self.proj = nn.Linear(dim, width)
        self.pos = nn.Parameter(torch.randn(1, tokens, width) * 0.02)

    def forward(self, x):
        b = x.shape[0]
        if self.patch is None:
            x = x.reshape(b, -1, 1)
        else:
            c, h, w = self.input_shape
            p = self.patch
            x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)
        return self.proj(x) + self.pos

    def residual(self) -> list:
        """What sets the residual width: pruning keeps these whole (compress/stages/prune.py)."""
        return [self.proj, self.pos]


def text_transformer(input_shape: tuple[int, ...], num_classes: int, width: int = 64, depth: int = 2, heads: int = 4,
                     patch: int = 1, mlp_ratio: int = 2) -> nn.Module:
    """The ``transformer`` encoder over bytes: input N x L of byte values (0..255, float like every input
    of the pipeline), an embedding of the 256 byte values, ``patch`` consecutive bytes per token (their
    embeddings concatenated and projected to ``width``; 1 = one token per byte), a learned position
    embedding, ``depth`` pre-norm blocks, LayerNorm, mean over tokens, linear classifier.

    Layers are named as in ``transformer`` (``features.0`` the embedding, ``features.1..depth`` the blocks),
    so the prune stage removes heads (``head_ratio``) and MLP hidden units (``ratio``) the same way.
    Patches of 4 bytes make a 128-byte snippet 32 tokens: attention and MLPs cost 4x less, and each
    token sees a 4-gram (MEGABYTE, Yu et al. 2023, cuts byte sequences into patches the same way).

    >>> text_transformer((128,), 8, width=64, depth=2, heads=4, patch=4)  # 77.9k params, 2.3M MACs
    """
    if len(input_shape) != 1:
        raise ValueError(f"arch 'text_transformer' needs byte sequences N x L (got input shape {tuple(input_shape)}); "
                         "use data source 'stdlib-text' or 'text'")
    if width % heads:
        raise ValueError(f"arch 'text_transformer': width {width} must be a multiple of heads {heads}")
    if input_shape[0] % patch:
        raise ValueError(f"arch 'text_transformer': patch {patch} does not divide the snippet length {input_shape[0]}")
    blocks = [_Block(width, heads, mlp_ratio * width) for _ in range(depth)]
    return _Net(nn.Sequential(ByteTokens(input_shape[0], width, patch), *blocks, nn.LayerNorm(width)), _TokenMean(),
                nn.Linear(width, num_classes))


class ByteTokens(nn.Module):
    """Byte values (float, N x L) -> (batch, L / patch, width): ``embed`` (256 x dim) per byte, ``patch``
    byte embeddings concatenated and projected by ``proj`` (patch > 1 only; dim = ceil(width / patch)),
    plus a learned position embedding.

    Values are rounded before the cast: an INT8 model sees its input through a quantize-dequantize pair
    whose step is below 0.5 (at most 255 / 255), so rounding recovers the exact byte, where truncation
    would turn 65.0 - 1e-6 into 64. Clamped to 0..255 so any float input is a valid index.
    """

    VOCAB = 256

    def __init__(self, length: int, width: int, patch: int = 1):
        super().__init__()
        self.patch = patch
        dim = width if patch == 1 else math.ceil(width / patch)
        self.embed = nn.Embedding(self.VOCAB, dim)
        self.proj = nn.Linear(patch * dim, width) if patch > 1 else None
        self.pos = nn.Parameter(torch.randn(1, length // patch, width) * 0.02)

    def forward(self, x):
        ids = x.round().clamp(0, self.VOCAB - 1).long()
        tokens = self.embed(ids)
        if self.proj is not None:
            tokens = self.proj(tokens.reshape(tokens.shape[0], self.pos.shape[1], -1))
        return tokens + self.pos

    def residual(self) -> list:
        """What sets the residual width: pruning keeps these whole (compress/stages/prune.py)."""
        return [self.embed, self.pos] + ([self.proj] if self.proj is not None else [])


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` Linear (timm's layout, which torch-pruning's
    head pruning understands). ``head_dim`` is fixed; the head count follows the layer's width, so a
    model whose heads were pruned (or loaded from a pruned checkpoint) needs no extra bookkeeping."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.head_dim = width // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    @property
    def num_heads(self) -> int:
        return self.qkv.out_features // (3 * self.head_dim)

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(width), Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(fc1=nn.Linear(width, hidden), act=nn.GELU(), fc2=nn.Linear(hidden, width)))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _TokenMean(nn.Module):
    def forward(self, x):
        return x.mean(dim=1)


ZOO = {"cnn": cnn, "mlp": mlp, "transformer": transformer, "text_transformer": text_transformer}
