"""Losses, one small module each with its formula in the docstring, built from the config.

- :class:`InfoNCELoss` — in-batch + hard negatives, gathered over DDP ranks with gradient
- :class:`MarginMSELoss` — distillation on teacher score margins
- :class:`KLDistillationLoss` — distillation on teacher score distributions
- :class:`FlopsRegularizer` — FLOPS or L1 over the global batch (optionally IDF-aware)
"""

from __future__ import annotations

from torch import nn

from spladeray.train.losses.base import SparseBatch
from spladeray.train.losses.distributed import (
    all_gather_with_grad,
    all_reduce_with_grad,
    is_distributed,
)
from spladeray.train.losses.flops import FlopsRegularizer
from spladeray.train.losses.infonce import InfoNCELoss
from spladeray.train.losses.kl import KLDistillationLoss
from spladeray.train.losses.margin_mse import MarginMSELoss

__all__ = [
    "FlopsRegularizer",
    "InfoNCELoss",
    "KLDistillationLoss",
    "MarginMSELoss",
    "SparseBatch",
    "all_gather_with_grad",
    "all_reduce_with_grad",
    "build_loss",
    "is_distributed",
]


def build_loss(loss_cfg) -> nn.Module:
    """The module a :class:`spladeray.config.TrainLossConfig` names."""
    if loss_cfg.name == "infonce":
        return InfoNCELoss(loss_cfg.temperature)
    if loss_cfg.name == "margin_mse":
        return MarginMSELoss(loss_cfg.teacher)
    if loss_cfg.name == "kl":
        return KLDistillationLoss(
            loss_cfg.teacher, loss_cfg.temperature, loss_cfg.teacher_temperature
        )
    raise ValueError(f"unknown loss {loss_cfg.name!r}")
