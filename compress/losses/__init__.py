"""Distillation losses, one small module per family."""

from compress.losses.hinton import hinton_kd_loss, soft_kl

__all__ = ["hinton_kd_loss", "soft_kl"]
