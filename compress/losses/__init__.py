"""Distillation losses, one small module per family, registered by ``kind``.

Adding a loss is one new file here (a frozen ``LossConfig`` subclass with a ``kind`` literal and a
builder decorated with ``@register_loss``) and one import line below.
"""

from compress.losses.base import LOSSES, Batch, LossConfig, Probe, Term, register_loss
from compress.losses.hinton import hinton_kd_loss, soft_kl
from compress.losses import logits as _logits  # noqa: F401  kl, mse, ce
from compress.losses import hint as _hint  # noqa: F401  FitNets hints
from compress.losses import attention as _attention  # noqa: F401  attention transfer
from compress.losses import rkd as _rkd  # noqa: F401  RKD distance and angle

__all__ = ["LOSSES", "Batch", "LossConfig", "Probe", "Term", "register_loss", "hinton_kd_loss", "soft_kl"]
