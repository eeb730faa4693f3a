"""Small but faithful versions of the architectures users bring, without torchvision.

Each factory takes ``num_classes`` (plus ``in_channels`` / ``image_size`` and width knobs) and returns an
``nn.Module`` for N x C x H x W images: 3 x 32 x 32 (the benchmark's resized digits) and 1 x 8 x 8 (the
built-in digits). The blocks, module names, activations, normalisation and initialisation follow torchvision's
(``torchvision/models/{resnet,mobilenetv2,mobilenetv3,efficientnet,vision_transformer}.py`` and
``torchvision/ops/misc.py``); only the stage lists are shorter and the stems fit 32 x 32 inputs. A recipe names
them as ``factory: "archs:<function>"`` (``tests/`` is on ``sys.path`` under pytest; the benchmark adds it).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["resnet", "mobilenet_v2", "mobilenet_v3", "efficientnet", "vit", "ARCHS"]


def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's channel rounding (from the TF MobileNet code): nearest multiple of ``divisor``, at least
    ``min_value``, never more than 10 % below ``v``."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvNormActivation(nn.Sequential):
    """torchvision.ops.Conv2dNormActivation: conv (no bias when normalised) -> norm -> activation,
    ``padding = (kernel - 1) // 2 * dilation``; children named 0, 1, 2 like torchvision's."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 norm_layer: Callable[..., nn.Module] | None = nn.BatchNorm2d,
                 activation_layer: Callable[..., nn.Module] | None = nn.ReLU, dilation: int = 1):
        padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation,
                                             groups=groups, bias=norm_layer is None)]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: avgpool -> fc1 (1x1 conv) -> activation -> fc2 -> scale_activation,
    and the input times that scale (per channel)."""

    def __init__(self, input_channels: int, squeeze_channels: int, activation: Callable[..., nn.Module] = nn.ReLU,
                 scale_activation: Callable[..., nn.Module] = nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def _scale(self, x: Tensor) -> Tensor:
        scale = self.avgpool(x)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        return self.scale_activation(scale)

    def forward(self, x: Tensor) -> Tensor:
        return self._scale(x) * x


# --- ResNet (basic blocks) --------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock: 3x3 conv-BN-ReLU, 3x3 conv-BN, plus the identity (or a 1x1
    conv-BN ``downsample`` when the shape changes), then ReLU."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision.models.resnet.ResNet with BasicBlock, CIFAR-style: a 3x3 stride-1 stem and no max-pool
    (torchvision's 7x7 stride-2 stem and max-pool would leave 8 x 8 of a 32 x 32 image before the first stage)."""

    def __init__(self, layers: list[int], widths: list[int], num_classes: int, in_channels: int = 3,
                 zero_init_residual: bool = False):
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        for i, (n, w) in enumerate(zip(layers, widths)):
            setattr(self, f"layer{i + 1}", self._make_layer(w, n, stride=1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1] * BasicBlock.expansion, num_classes)
        self.num_stages = len(layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet(num_classes: int = 10, in_channels: int = 3, width: int = 16, blocks: tuple[int, ...] = (1, 1, 1),
           **_ignored) -> ResNet:
    """A ResNet of basic blocks: ``len(blocks)`` stages of ``width * 2**i`` channels (stride 2 from the second),
    ``blocks[i]`` blocks each; (2, 2, 2, 2) with width 64 is ResNet-18's layout. Extra keyword arguments (such
    as ``image_size``) are accepted so one recipe template fits every factory."""
    return ResNet(list(blocks), [width * 2 ** i for i in range(len(blocks))], num_classes, in_channels)


# --- MobileNetV2 --------------------------------------------------------------------------------------


class InvertedResidualV2(nn.Module):
    """torchvision.models.mobilenetv2.InvertedResidual: 1x1 expand (ReLU6, skipped when t = 1), 3x3 depthwise
    (ReLU6), 1x1 project (linear: BN, no activation); the input is added when stride is 1 and widths match."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormActivation(inp, hidden_dim, 1, norm_layer=norm_layer, activation_layer=nn.ReLU6))
        layers += [ConvNormActivation(hidden_dim, hidden_dim, 3, stride=stride, groups=hidden_dim, norm_layer=norm_layer,
                                      activation_layer=nn.ReLU6),
                   nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
                   norm_layer(oup)]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


# torchvision's table: t (expansion), c (channels), n (blocks), s (stride of the first)
MOBILENET_V2_SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                        [6, 320, 1, 1]]



def _init_mobilenet(model: nn.Module) -> None:
    """torchvision's MobileNetV2/V3 initialisation: Kaiming (fan out) convolutions, unit norms, small linear layers."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)

class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width_mult: float, setting: list[list[int]],
                 input_channel: int = 32, last_channel: int = 1280, stem_stride: int = 2, dropout: float = 0.2):
        super().__init__()
        norm_layer = nn.BatchNorm2d
        input_channel = _make_divisible(input_channel * width_mult, 8)
        self.last_channel = _make_divisible(last_channel * max(1.0, width_mult), 8)
        features: list[nn.Module] = [ConvNormActivation(in_channels, input_channel, 3, stride=stem_stride,
                                                        norm_layer=norm_layer, activation_layer=nn.ReLU6)]
        for t, c, n, s in setting:
            output_channel = _make_divisible(c * width_mult, 8)
            for i in range(n):
                features.append(InvertedResidualV2(input_channel, output_channel, s if i == 0 else 1, t, norm_layer))
                input_channel = output_channel
        features.append(ConvNormActivation(input_channel, self.last_channel, 1, norm_layer=norm_layer,
                                           activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        _init_mobilenet(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(num_classes: int = 10, in_channels: int = 3, width_mult: float = 0.5, stages: int = 4,
                 last_channel: int = 128, **_ignored) -> MobileNetV2:
    """torchvision's MobileNetV2 (its t/c/n/s table, channel rounding, ReLU6, linear bottleneck, init), cut to
    the first ``stages`` rows of the table (one block per row after the first two rows keep theirs) with a
    ``last_channel``-wide last 1x1 conv instead of 1280."""
    setting = [list(r) for r in MOBILENET_V2_SETTING[:stages]]
    for r in setting[2:]:
        r[2] = min(r[2], 2)
    return MobileNetV2(num_classes, in_channels, width_mult, setting, last_channel=last_channel)


# --- MobileNetV3 --------------------------------------------------------------------------------------


class InvertedResidualConfig:
    """torchvision.models.mobilenetv3.InvertedResidualConfig (channels scaled by ``width_mult``, rounded to 8)."""

    def __init__(self, input_channels: int, kernel: int, expanded_channels: int, out_channels: int, use_se: bool,
                 activation: str, stride: int, dilation: int, width_mult: float):
        self.input_channels = _make_divisible(input_channels * width_mult, 8)
        self.kernel = kernel
        self.expanded_channels = _make_divisible(expanded_channels * width_mult, 8)
        self.out_channels = _make_divisible(out_channels * width_mult, 8)
        self.use_se = use_se
        self.use_hs = activation == "HS"
        self.stride = stride
        self.dilation = dilation


class InvertedResidualV3(nn.Module):
    """torchvision.models.mobilenetv3.InvertedResidual: expand 1x1 (when wider), depthwise kxk, SE (squeeze to
    ``_make_divisible(expanded // 4, 8)``, hardsigmoid scale), project 1x1 (no activation), residual add when
    stride is 1 and widths match; ReLU or hardswish per block."""

    def __init__(self, cnf: InvertedResidualConfig, norm_layer: Callable[..., nn.Module]):
        super().__init__()
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        layers: list[nn.Module] = []
        activation_layer = nn.Hardswish if cnf.use_hs else nn.ReLU
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(ConvNormActivation(cnf.input_channels, cnf.expanded_channels, 1, norm_layer=norm_layer,
                                             activation_layer=activation_layer))
        stride = 1 if cnf.dilation > 1 else cnf.stride
        layers.append(ConvNormActivation(cnf.expanded_channels, cnf.expanded_channels, cnf.kernel, stride=stride,
                                         dilation=cnf.dilation, groups=cnf.expanded_channels, norm_layer=norm_layer,
                                         activation_layer=activation_layer))
        if cnf.use_se:
            squeeze_channels = _make_divisible(cnf.expanded_channels // 4, 8)
            layers.append(SqueezeExcitation(cnf.expanded_channels, squeeze_channels, scale_activation=nn.Hardsigmoid))
        layers.append(ConvNormActivation(cnf.expanded_channels, cnf.out_channels, 1, norm_layer=norm_layer,
                                         activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = cnf.out_channels
        self._is_cn = cnf.stride > 1

    def forward(self, x: Tensor) -> Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result += x
        return result


# torchvision's mobilenet_v3_small table: in, kernel, expanded, out, SE, activation, stride, dilation
MOBILENET_V3_SMALL = [(16, 3, 16, 16, True, "RE", 2, 1), (16, 3, 72, 24, False, "RE", 2, 1),
                      (24, 3, 88, 24, False, "RE", 1, 1), (24, 5, 96, 40, True, "HS", 2, 1),
                      (40, 5, 240, 40, True, "HS", 1, 1), (40, 5, 240, 40, True, "HS", 1, 1),
                      (40, 5, 120, 48, True, "HS", 1, 1), (48, 5, 144, 48, True, "HS", 1, 1),
                      (48, 5, 288, 96, True, "HS", 2, 1), (96, 5, 576, 96, True, "HS", 1, 1),
                      (96, 5, 576, 96, True, "HS", 1, 1)]


class MobileNetV3(nn.Module):
    def __init__(self, setting: list[InvertedResidualConfig], last_channel: int, num_classes: int, in_channels: int,
                 bn_momentum: float = 0.01, bn_eps: float = 0.001, stem_stride: int = 2, dropout: float = 0.2):
        super().__init__()
        norm_layer = partial(nn.BatchNorm2d, eps=bn_eps, momentum=bn_momentum)
        first = setting[0].input_channels
        layers: list[nn.Module] = [ConvNormActivation(in_channels, first, 3, stride=stem_stride, norm_layer=norm_layer,
                                                      activation_layer=nn.Hardswish)]
        layers += [InvertedResidualV3(cnf, norm_layer) for cnf in setting]
        lastconv_input = setting[-1].out_channels
        lastconv_output = 6 * lastconv_input
        layers.append(ConvNormActivation(lastconv_input, lastconv_output, 1, norm_layer=norm_layer,
                                         activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(lastconv_output, last_channel), nn.Hardswish(inplace=True),
                                        nn.Dropout(p=dropout, inplace=True), nn.Linear(last_channel, num_classes))
        _init_mobilenet(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x)


def mobilenet_v3(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, blocks: int = 4,
                 last_channel: int = 64, bn_momentum: float = 0.01, **_ignored) -> MobileNetV3:
    """torchvision's mobilenet_v3_small (its table, SE with hardsigmoid, hardswish, BatchNorm momentum 0.01 and
    eps 0.001, init), first ``blocks`` rows of the table (4: the 16-channel stem, an SE block, two ReLU blocks,
    an SE + hardswish block), last hidden Linear ``last_channel`` wide instead of 1024. ``bn_momentum`` exists
    to compare with PyTorch's default 0.1; the faithful value is 0.01."""
    setting = [InvertedResidualConfig(*row, width_mult=width_mult) for row in MOBILENET_V3_SMALL[:blocks]]
    return MobileNetV3(setting, last_channel, num_classes, in_channels, bn_momentum=bn_momentum)


# --- EfficientNet (MBConv) ----------------------------------------------------------------------------


class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth, mode "row": in training, zero each sample's branch with probability
    ``p`` and scale survivors by 1 / (1 - p); the identity in eval mode."""

    def __init__(self, p: float, mode: str = "row"):
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        shape = [x.shape[0]] + [1] * (x.ndim - 1) if self.mode == "row" else [1] * x.ndim
        noise = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(survival)
        return x * noise.div_(survival)


class MBConv(nn.Module):
    """torchvision.models.efficientnet.MBConv: expand 1x1 (SiLU, when wider), depthwise kxk (SiLU), SE (squeeze
    to ``max(1, input_channels // 4)``, SiLU, sigmoid scale), project 1x1 (no activation); stochastic depth
    then the residual add when stride is 1 and widths match."""

    def __init__(self, expand_ratio: float, kernel: int, stride: int, input_channels: int, out_channels: int,
                 stochastic_depth_prob: float, norm_layer: Callable[..., nn.Module]):
        super().__init__()
        self.use_res_connect = stride == 1 and input_channels == out_channels
        layers: list[nn.Module] = []
        expanded = _make_divisible(input_channels * expand_ratio, 8)
        if expanded != input_channels:
            layers.append(ConvNormActivation(input_channels, expanded, 1, norm_layer=norm_layer, activation_layer=nn.SiLU))
        layers.append(ConvNormActivation(expanded, expanded, kernel, stride=stride, groups=expanded, norm_layer=norm_layer,
                                         activation_layer=nn.SiLU))
        layers.append(SqueezeExcitation(expanded, max(1, input_channels // 4), activation=partial(nn.SiLU, inplace=True)))
        layers.append(ConvNormActivation(expanded, out_channels, 1, norm_layer=norm_layer, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += x
        return result


# torchvision's efficientnet_b0 table: expand ratio, kernel, stride, in, out, layers
EFFICIENTNET_B0 = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
                   (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]


class EfficientNet(nn.Module):
    def __init__(self, setting, num_classes: int, in_channels: int, width_mult: float, stochastic_depth_prob: float,
                 dropout: float = 0.2, last_channel: int | None = None, stem_stride: int = 2):
        super().__init__()
        norm_layer = nn.BatchNorm2d  # B0-B4; B5+ and V2 pass other eps/momentum
        adjust = lambda c: _make_divisible(c * width_mult, 8)  # noqa: E731
        rows = [(t, k, s, adjust(i), adjust(o), n) for t, k, s, i, o, n in setting]
        layers: list[nn.Module] = [ConvNormActivation(in_channels, rows[0][3], 3, stride=stem_stride,
                                                      norm_layer=norm_layer, activation_layer=nn.SiLU)]
        total, block_id = sum(r[5] for r in rows), 0
        for t, k, s, i, o, n in rows:
            stage: list[nn.Module] = []
            for j in range(n):
                sd = stochastic_depth_prob * float(block_id) / total
                stage.append(MBConv(t, k, s if j == 0 else 1, i if j == 0 else o, o, sd, norm_layer))
                block_id += 1
            layers.append(nn.Sequential(*stage))
        lastconv_input = rows[-1][4]
        lastconv_output = last_channel if last_channel is not None else 4 * lastconv_input
        layers.append(ConvNormActivation(lastconv_input, lastconv_output, 1, norm_layer=norm_layer, activation_layer=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True), nn.Linear(lastconv_output, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                init_range = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -init_range, init_range)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x)


def efficientnet(num_classes: int = 10, in_channels: int = 3, width_mult: float = 0.5, stages: int = 4,
                 stochastic_depth_prob: float = 0.0, last_channel: int | None = 128, **_ignored) -> EfficientNet:
    """torchvision's EfficientNet-B0 (its MBConv table, SiLU, SE, init), first ``stages`` rows of the table with at
    most 2 blocks each, last 1x1 conv ``last_channel`` wide (None: 4 x its input, as torchvision). Stochastic
    depth is off by default (torchvision: 0.2); pass ``stochastic_depth_prob`` to turn it on."""
    setting = [(t, k, s, i, o, min(n, 2)) for t, k, s, i, o, n in EFFICIENTNET_B0[:stages]]
    return EfficientNet(setting, num_classes, in_channels, width_mult, stochastic_depth_prob, last_channel=last_channel)


# --- Vision Transformer -------------------------------------------------------------------------------


class MLPBlock(nn.Sequential):
    """torchvision.models.vision_transformer.MLPBlock: Linear -> GELU -> Dropout -> Linear -> Dropout (children
    0, 1, 2, 3, 4), xavier-uniform weights."""

    def __init__(self, in_dim: int, mlp_dim: int, dropout: float):
        super().__init__(nn.Linear(in_dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, in_dim),
                         nn.Dropout(dropout))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)


class EncoderBlock(nn.Module):
    """Pre-norm: x + attention(LN(x)), then + MLP(LN(.)); LayerNorm eps 1e-6; ``nn.MultiheadAttention``."""

    def __init__(self, num_heads: int, hidden_dim: int, mlp_dim: int, dropout: float = 0.0, attention_dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.ln_1 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(hidden_dim, num_heads, dropout=attention_dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(hidden_dim, eps=1e-6)
        self.mlp = MLPBlock(hidden_dim, mlp_dim, dropout)

    def forward(self, inp: Tensor) -> Tensor:
        x = self.ln_1(inp)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x) + inp
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    def __init__(self, seq_length: int, num_layers: int, num_heads: int, hidden_dim: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential(*[EncoderBlock(num_heads, hidden_dim, mlp_dim, dropout) for _ in range(num_layers)])
        self.ln = nn.LayerNorm(hidden_dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class VisionTransformer(nn.Module):
    """torchvision.models.vision_transformer.VisionTransformer: a patchify conv (``conv_proj``), a class token
    (or mean pooling over tokens with ``pool="mean"``), learned positions, pre-norm encoder blocks and a
    zero-initialised ``heads.head``."""

    def __init__(self, image_size: int, patch_size: int, num_layers: int, num_heads: int, hidden_dim: int, mlp_dim: int,
                 num_classes: int, in_channels: int = 3, pool: str = "cls"):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', not {pool!r}")
        self.image_size, self.patch_size, self.hidden_dim, self.pool = image_size, patch_size, hidden_dim, pool
        self.conv_proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=patch_size, stride=patch_size)
        seq_length = (image_size // patch_size) ** 2
        if pool == "cls":
            self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
            seq_length += 1
        self.encoder = Encoder(seq_length, num_layers, num_heads, hidden_dim, mlp_dim)
        self.seq_length = seq_length
        self.heads = nn.Sequential()
        self.heads.add_module("head", nn.Linear(hidden_dim, num_classes))
        fan_in = in_channels * patch_size * patch_size
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)
        nn.init.zeros_(self.heads.head.weight)
        nn.init.zeros_(self.heads.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        x = self.conv_proj(x)  # (n, hidden, h/p, w/p)
        x = x.flatten(2).permute(0, 2, 1)  # (n, tokens, hidden)
        if self.pool == "cls":
            x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        x = self.encoder(x)
        x = x[:, 0] if self.pool == "cls" else x.mean(dim=1)
        return self.heads(x)


def vit(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, patch_size: int | None = None,
        hidden_dim: int = 32, num_layers: int = 2, num_heads: int = 4, mlp_dim: int | None = None, pool: str = "cls",
        **_ignored) -> VisionTransformer:
    """A tiny ViT: patches of ``patch_size`` (default: image_size // 8, so 64 tokens at 32 x 32 and 16 at 8 x 8
    with patch 2), ``num_layers`` blocks of ``num_heads`` heads, MLP ``mlp_dim`` (default 2 x hidden_dim)."""
    patch = patch_size or (image_size // 8 if image_size >= 16 else 2)
    return VisionTransformer(image_size, patch, num_layers, num_heads, hidden_dim, mlp_dim or 2 * hidden_dim, num_classes,
                             in_channels, pool)


ARCHS = {"resnet": resnet, "mobilenet_v2": mobilenet_v2, "mobilenet_v3": mobilenet_v3, "efficientnet": efficientnet,
         "vit": vit}
