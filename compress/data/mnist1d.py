"""MNIST-1D, generated offline: 5000 1-D signals of length 40, ten classes, 500 per class.

MNIST-1D (Greydanus 2020, "Scaling down Deep Learning", arXiv:2011.14439; https://github.com/greydanus/mnist1d)
draws each sample from one of ten hand-made 12-point digit templates, padded, stretched, scaled, translated,
noised and sheared at random (``_transform`` with ``ARGS``); the whole set is then centred and scaled to unit
variance. On it a linear model reaches ~32 % test accuracy, an MLP ~68 %, a CNN ~94 % (the paper's benchmark, its
4000/1000 split), so architectures and training methods separate where 8x8 digits does not.

This is a numpy-only reimplementation of ``mnist1d/data.py`` (``get_templates``, ``get_dataset_args``,
``make_dataset``) and ``mnist1d/transform.py`` at commit 7878d96 (2024-10-09), with the published templates and
default arguments (seed 42, ``shuffle_seq`` false). scipy's linear interpolation and gaussian filter are written
out below with the same arithmetic, and the random draws come in the original's order from
``numpy.random.RandomState(42)``, the generator behind the original's ``np.random.seed``. Checked (2026-12-02)
against the original code run with scipy 1.17: same labels and order, float64 values within 1e-15, bit-identical
after the float32 cast; and against the published ``mnist1d_data.pkl`` (its 4000 train + 1000 test samples,
concatenated in that order): same labels, values within 2.4e-7 (float32 rounding). So this *is* the standard
MNIST-1D, in its original sample order; the pipeline then applies its own seeded stratified split to all 5000
samples. The ``mnist1d`` package itself is not used: it needs scipy, requests and matplotlib, and its
``get_dataset`` downloads and unpickles a file.

License: MNIST-1D is Copyright (c) 2020 Sam Greydanus (and contributors: Peter Steinbach, Karim, Dmitry
Kobak, Jakob Jordan), licensed under the Apache License, Version 2.0
(http://www.apache.org/licenses/LICENSE-2.0). The ten templates and the default arguments below are taken
from that work; the code here is a derivative reimplementation, modified as described above (no scipy, no
download, no pickle, no train/test split: the project's seeded stratified split is applied instead).
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["mnist1d", "templates", "ARGS"]

# mnist1d.data.get_dataset_args(), without the download URL and the train/test split (the pipeline splits)
ARGS = {"num_samples": 5000, "template_len": 12, "padding": (36, 60), "scale_coeff": 0.4, "max_translation": 48,
        "corr_noise_scale": 0.25, "iid_noise_scale": 2e-2, "shear_scale": 0.75, "final_seq_length": 40, "seed": 42}

# mnist1d.data.get_templates(): one 12-point curve per digit 0..9
_TEMPLATES = np.asarray([
    [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
    [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
    [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
    [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
    [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
    [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
    [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
    [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
], dtype=np.float64)


def templates() -> np.ndarray:
    """The ten templates (10 x 12), whitened, starting and ending at 0, divided by 6 (as the original)."""
    x = _TEMPLATES - _TEMPLATES.mean(1, keepdims=True)
    x /= x.std(1, keepdims=True)
    x -= x[:, :1]
    return x / 6.0


def _interpolate(x: np.ndarray, n: int) -> np.ndarray:
    """scipy.interpolate.interp1d(linspace(0, 1, len(x)), x, kind="linear")(linspace(0, 1, n)), same arithmetic."""
    old, new = np.linspace(0, 1, len(x)), np.linspace(0, 1, n)
    hi = np.clip(np.searchsorted(old, new), 1, len(old) - 1)
    lo = hi - 1
    slope = (x[hi] - x[lo]) / (old[hi] - old[lo])
    return slope * (new - old[lo]) + x[lo]


def _gaussian_filter(x: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage.gaussian_filter(x, sigma) for 1-D x: mode "reflect" (edge sample repeated), truncate 4."""
    radius = int(truncate * float(sigma) + 0.5)
    k = np.exp(-0.5 / (sigma * sigma) * np.arange(-radius, radius + 1) ** 2)
    padded = np.pad(x, radius, mode="symmetric")  # ndimage's "reflect" is numpy's "symmetric"
    return np.correlate(padded, k / k.sum(), mode="valid")


def _transform(x: np.ndarray, rng: np.random.RandomState, a: dict, eps: float = 1e-8) -> np.ndarray:
    """mnist1d.transform.transform on one template, drawing from ``rng`` in the original's order."""
    low, high = a["padding"]
    p = low + int(rng.rand() * (high - low + 1))  # pad
    x = np.concatenate([x + eps, np.zeros(p)])
    x = _interpolate(x, a["template_len"] + high)  # dilate
    x = x * (1 + a["scale_coeff"] * (rng.rand() - 0.5))  # scale
    k = rng.choice(a["max_translation"])  # translate (circularly)
    x = np.concatenate([x[-k:], x[:-k]])
    mask = x != 0  # correlated noise where the signal is zero, white noise everywhere
    corr = _gaussian_filter(a["corr_noise_scale"] * rng.randn(*x.shape), 2)
    x = mask * x + (1 - mask) * corr
    x = x + a["iid_noise_scale"] * rng.randn(*x.shape)
    x = x - a["shear_scale"] * (rng.rand() - 0.5) * np.linspace(-0.5, 0.5, len(x))  # shear
    return _interpolate(x, a["final_seq_length"])  # subsample


def mnist1d(seed: int = ARGS["seed"], num_samples: int = ARGS["num_samples"]) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: x float32 of shape (N, 1, 40), y int64 labels 0..9, N = ``num_samples`` (5000, 500 per class).

    Deterministic for a given ``seed`` (default 42, the original's); generated once per process (under a
    second on one core) and copied out, so a caller may modify what it gets.
    """
    x, y = _generate(seed, num_samples)
    return x.copy(), y.copy()


@functools.lru_cache(maxsize=2)
def _generate(seed: int, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    t = templates()
    per_class = num_samples // len(t)
    xs = np.stack([_transform(t[c], rng, ARGS) for c in range(len(t)) for _ in range(per_class)])
    ys = np.repeat(np.arange(len(t), dtype=np.int64), per_class)
    order = rng.permutation(len(ys))  # the original shuffles before its 80/20 split
    xs, ys = xs[order], ys[order]
    xs = (xs - xs.mean()) / xs.std()  # centred, unit variance over the whole set
    return xs[:, None, :].astype(np.float32), ys
