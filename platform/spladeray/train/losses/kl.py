"""KL-divergence distillation over each query's candidates ``[positive, negative_1..n]``.

With ``p_t = softmax(t_i / T)`` (teacher) and ``p_s = softmax(s_i / T)`` (student)::

    L = 1/B  sum_i  KL(p_t || p_s) = 1/B  sum_i sum_j  p_t,ij (log p_t,ij - log p_s,ij)
"""

from __future__ import annotations

import torch
from torch import nn

from spladeray.train.losses.base import SparseBatch


class KLDistillationLoss(nn.Module):
    def __init__(self, teacher: str = "ensemble", temperature: float = 1.0) -> None:
        super().__init__()
        self.teacher = teacher
        self.temperature = temperature

    def forward(self, batch: SparseBatch) -> torch.Tensor:
        s = batch.candidate_scores().float() / self.temperature
        t = batch.teacher[self.teacher].float() / self.temperature
        log_ps = torch.log_softmax(s, dim=1)
        log_pt = torch.log_softmax(t, dim=1)
        return nn.functional.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True)
