"""``qat``: quantization-aware fine-tuning in torch with KD from the teacher, written as a QDQ INT8 ONNX file, for
when post-training INT8 loses too much (docs/quantization.md). BatchNorm is folded first (as onnxruntime sees the
export); Conv/Linear layers train with fake-quantized INT8 weights (per channel, straight-through) and UINT8
activations (moving-average ranges). It produces ONNX, so it ends the chain: ``quantize`` refuses its file.
"""

from __future__ import annotations

import copy
from typing import Literal

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from pydantic import Field
from torch import nn

from compress._onnx import export_onnx
from compress.artifact import Artifact
from compress.errors import StageError
from compress.quantization.backend import drop_unused_initializers, reduce_range
from compress.stages.base import register_stage
from compress.stages.train import Schedule

__all__ = ["QatConfig", "qat", "prepare_qat", "fold_batchnorm", "to_qdq", "FakeQuantLayer"]


class QatConfig(Schedule):
    type: Literal["qat"]
    epochs: int = Field(5, ge=1, le=10_000)
    lr: float = Field(3e-4, gt=0, le=10, description="small: the weights are trained, only quantization noise is new")
    temperature: float = Field(4.0, gt=0, le=100, description="KD from the teacher, as in distill")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the hard-label loss; 1 - alpha goes to the soft loss")
    momentum: float = Field(0.1, gt=0, le=1, description="activation ranges: weight of each batch's min/max in the average")
    calibration_samples: int = Field(256, ge=1, le=1_000_000, description="training samples that set the first ranges")
    reduce_range: Literal["auto", True, False] = Field(
        "auto", description="7-bit weights; auto = on when the CPU lacks VNNI (as in quantize)")
    opset: int = Field(17, ge=13, le=23)
    tolerance: float = Field(0.05, gt=0, description="max abs logit difference between onnxruntime and torch's "
                                                    "fake-quantized model, relative to the largest logit")


class _ActQuant(nn.Module):
    """Per-tensor UINT8 fake quantization; the range is a moving average of batch min/max while training."""

    def __init__(self, momentum: float):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(0))

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = torch.clamp(self.lo, max=0.0), torch.clamp(self.hi, min=0.0)  # zero must be exact
        scale = torch.clamp((hi - lo) / 255.0, min=1e-8)
        zp = torch.clamp(torch.round(-lo / scale), 0, 255).to(torch.int32)
        return scale.reshape(1), zp.reshape(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                lo, hi = x.min(), x.max()
                if int(self.seen) == 0:
                    self.lo.copy_(lo)
                    self.hi.copy_(hi)
                else:
                    self.lo.mul_(1 - self.momentum).add_(self.momentum * lo)
                    self.hi.mul_(1 - self.momentum).add_(self.momentum * hi)
                self.seen += 1
        scale, zp = self.qparams()
        if torch.onnx.is_in_onnx_export():  # constants in the file: QuantizeLinear/DequantizeLinear with uint8
            return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), 0, 255)
        return torch.fake_quantize_per_tensor_affine(x, scale, zp, 0, 255)


def _weight_fq(w: torch.Tensor, qmax: int) -> torch.Tensor:
    """Symmetric per-output-channel fake quantization with a straight-through gradient."""
    amax = w.detach().abs().reshape(w.shape[0], -1).amax(1).clamp(min=1e-12)
    scale = (amax / qmax).reshape(-1, *([1] * (w.dim() - 1)))
    q = torch.clamp(torch.round(w / scale), -qmax, qmax) * scale
    return w + (q - w).detach()


class FakeQuantLayer(nn.Module):
    """A Conv2d or Linear with fake-quantized input, weights and output."""

    def __init__(self, layer: nn.Module, qmax: int, momentum: float):
        super().__init__()
        self.layer, self.qmax, self.fq_weight = layer, qmax, True
        self.act_in, self.act_out = _ActQuant(momentum), _ActQuant(momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_in(x)
        w = _weight_fq(self.layer.weight, self.qmax) if self.fq_weight else self.layer.weight
        if isinstance(self.layer, nn.Linear):
            y = nn.functional.linear(x, w, self.layer.bias)
        else:
            y = self.layer._conv_forward(x, w, self.layer.bias)
        return self.act_out(y)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy with every (Conv2d, BatchNorm2d) and (Linear, BatchNorm1d) pair inside an nn.Sequential fused."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            first, second = seq._modules[a], seq._modules[b]
            if (isinstance(first, nn.Conv2d) and isinstance(second, nn.BatchNorm2d)) or \
                    (isinstance(first, nn.Conv1d) and isinstance(second, nn.BatchNorm1d)):
                seq._modules[a], seq._modules[b] = fuse_conv_bn_eval(first, second), nn.Identity()
            elif isinstance(first, nn.Linear) and isinstance(second, nn.BatchNorm1d):
                seq._modules[a], seq._modules[b] = fuse_linear_bn_eval(first, second), nn.Identity()
    return model


def prepare_qat(model: nn.Module, qmax: int = 127, momentum: float = 0.1) -> nn.Module:
    """A BN-folded copy with every Conv2d and Linear wrapped in a ``FakeQuantLayer``."""
    model = fold_batchnorm(model)
    for parent in list(model.modules()):  # listed first: the wrappers made below are not visited
        for name, child in parent.named_children():
            if isinstance(child, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                setattr(parent, name, FakeQuantLayer(child, qmax, momentum))
    return model


@torch.no_grad()
def observe(model: nn.Module, x: np.ndarray, samples: int, seed: int, batch_size: int = 64) -> None:
    """Set the first activation ranges from ``samples`` training rows (forward passes only)."""
    idx = np.sort(np.random.default_rng(seed).permutation(len(x))[:samples])
    model.train()
    for i in range(0, len(idx), batch_size):
        model(torch.from_numpy(np.ascontiguousarray(x[idx[i:i + batch_size]])))
    model.eval()


def to_qdq(model: nn.Module, input_shape, path, opset: int = 17) -> dict:
    """Export the fake-quantized ``model`` to a QDQ ONNX file with INT8 weight initializers.

    The weights are exported already fake-quantized (each channel a multiple of its scale) and are then
    stored as INT8 with a DequantizeLinear, exactly: ``w = q * scale`` with ``scale = max|w| / qmax``.
    """
    model = copy.deepcopy(model).eval()
    layers = [m for m in model.modules() if isinstance(m, FakeQuantLayer)]
    with torch.no_grad():
        for m in layers:
            m.layer.weight.copy_(_weight_fq(m.layer.weight, m.qmax))
            m.fq_weight = False  # exported on the grid already: no second rounding
    path = export_onnx(model, tuple(input_shape), path, opset)
    proto = onnx.load(str(path))
    n = _int8_weights(proto, max((m.qmax for m in layers), default=127))
    onnx.save(proto, str(path))
    return {"int8_weight_tensors": n}


def _int8_weights(model: onnx.ModelProto, qmax: int) -> int:
    """Replace the fp32 weight initializer of every Conv/Gemm fed by a DequantizeLinear'd input by INT8 values +
    DequantizeLinear (per output channel); returns how many."""
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    new_nodes = []
    for node in model.graph.node:
        if (node.op_type not in ("Conv", "Gemm") or node.input[1] not in inits
                or getattr(producer.get(node.input[0]), "op_type", None) != "DequantizeLinear"):
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        # the output-channel axis: Conv: [out, in, kh, kw]; Linear exports as Gemm with transB=1: [out, in]
        axis = 1 if node.op_type == "Gemm" and not next((a.i for a in node.attribute if a.name == "transB"), 0) else 0
        amax = np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).max(1)
        scale = np.where(amax > 0, amax / qmax, 1.0)
        shape = [-1 if d == axis else 1 for d in range(w.ndim)]
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        base = node.input[1]
        model.graph.initializer.extend([numpy_helper.from_array(q, base + "_int8"),
                                        numpy_helper.from_array(scale.astype(np.float32), base + "_scale"),
                                        numpy_helper.from_array(np.zeros(len(scale), np.int8), base + "_zero_point")])
        new_nodes.append(helper.make_node("DequantizeLinear", [base + "_int8", base + "_scale", base + "_zero_point"],
                                          [base + "_dq"], name=base + "_DequantizeLinear", axis=axis))
        node.input[1] = base + "_dq"
    # DequantizeLinear of constants first: the graph stays topologically sorted
    nodes = new_nodes + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(drop_unused_initializers(model))
    return len(new_nodes)


@register_stage(QatConfig, accepts={"torch"}, produces="onnx", trains=True)
def qat(art: Artifact, cfg: QatConfig, ctx) -> Artifact:
    from compress.runtimes.onnxruntime import load
    from compress.stages.distill import kd_loss_fn

    seven_bit = reduce_range(cfg.reduce_range)
    model = prepare_qat(art.model, qmax=63 if seven_bit else 127, momentum=cfg.momentum)
    observe(model, ctx.splits.train.x, cfg.calibration_samples, ctx.recipe.seed)
    res = cfg.fit(model, ctx, "qat", loss_fn=kd_loss_fn(ctx, cfg.temperature, cfg.alpha))
    qmodel = res.model.eval()
    path = ctx.stage_path("qat", ".onnx")
    facts = to_qdq(qmodel, ctx.splits.input_shape, path, cfg.opset)
    x = np.ascontiguousarray(ctx.splits.val.x[:256])
    with torch.no_grad():
        ref = qmodel(torch.from_numpy(x)).numpy()
    got = load(path, threads=1).predict(x)
    diff = float(np.abs(ref - got).max()) / max(float(np.abs(ref).max()), 1e-12)
    agree = float((ref.argmax(1) == got.argmax(1)).mean())
    if not diff <= cfg.tolerance:
        hint = ("; this CPU lacks VNNI, where onnxruntime's u8s8 kernels saturate with 8-bit weights: use "
                "reduce_range: auto" if not seven_bit and reduce_range("auto") else "")
        raise StageError(f"qat: onnxruntime's logits differ from torch's fake-quantized model by {diff:.3g} of the "
                         f"largest logit (tolerance {cfg.tolerance}); the file {path} is not trustworthy{hint}")
    kinds = [n.op_type for n in onnx.load(str(path)).graph.node]
    info = {**res.info,
            "weight_bits": 7 if seven_bit else 8, "activations": "uint8", "parity_rel_max_diff": diff,
            "parity_argmax_agreement": agree, "quantize_linear_nodes": kinds.count("QuantizeLinear"),
            "formats": ["onnx"], **facts,
            "notes": [f"Quantization-aware training: {cfg.epochs} epoch(s) with fake-quantized weights "
                      f"({7 if seven_bit else 8}-bit, per channel) and UINT8 activations, KD from the teacher "
                      f"(T={cfg.temperature}, alpha={cfg.alpha}); best validation accuracy {res.best_val_accuracy:.2%} "
                      f"(fake-quantized).",
                      f"Exported as QDQ ONNX ({kinds.count('QuantizeLinear')} QuantizeLinear, "
                      f"{facts['int8_weight_tensors']} INT8 weight tensors); onnxruntime agrees with torch's "
                      f"fake-quantized model on {agree:.1%} of 256 validation predictions (max logit difference "
                      f"{diff:.2%} of the largest logit)."]}
    return art.derive("qat", format="onnx", model=None, path=path, info=info)
