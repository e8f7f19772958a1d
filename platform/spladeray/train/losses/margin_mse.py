"""MarginMSE distillation (Hofstaetter et al., 2020) on precomputed teacher scores.

With student scores ``s`` and teacher scores ``t`` of ``[positive, negative_1..n]``::

    L = 1/(B n)  sum_i sum_j  ( (s_i+ - s_ij) - (t_i+ - t_ij) )^2
"""

from __future__ import annotations

import torch
from torch import nn

from spladeray.train.losses.base import SparseBatch


class MarginMSELoss(nn.Module):
    def __init__(self, teacher: str = "ensemble") -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, batch: SparseBatch) -> torch.Tensor:
        s = batch.candidate_scores().float()
        t = batch.teacher[self.teacher].float()
        student_margin = s[:, :1] - s[:, 1:]
        teacher_margin = t[:, :1] - t[:, 1:]
        return nn.functional.mse_loss(student_margin, teacher_margin)
