"""KL-divergence distillation over each query's candidates ``[positive, negative_1..n]``.

With teacher scores ``t_i``, student scores ``s_i``, ``p_t = softmax(t_i / T_t)`` and
``p_s = softmax(s_i / T)``::

    L = 1/B  sum_i  KL(p_t || p_s) = 1/B  sum_i sum_j  p_t,ij (log p_t,ij - log p_s,ij)

``T_t`` (``teacher_temperature``) defaults to ``T``. The two temperatures put both distributions
on the same footing when the scores live on different scales: the prepared ensemble is min-max
per query times ``prepare.ensemble.scale`` (range ``[0, scale]``), while splade-tiny's dot
products on SciFact spread over some 10-20 points. With ``scale = 10`` and ``T = T_t = 5`` (the
InfoNCE temperature), both softmaxes see logit gaps of a few units.
"""

from __future__ import annotations

import torch
from torch import nn

from spladeray.train.losses.base import SparseBatch


class KLDistillationLoss(nn.Module):
    def __init__(
        self,
        teacher: str = "ensemble",
        temperature: float = 1.0,
        teacher_temperature: float | None = None,
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.temperature = temperature
        self.teacher_temperature = teacher_temperature or temperature

    def forward(self, batch: SparseBatch) -> torch.Tensor:
        s = batch.candidate_scores().float() / self.temperature
        t = batch.teacher[self.teacher].float() / self.teacher_temperature
        log_ps = torch.log_softmax(s, dim=1)
        log_pt = torch.log_softmax(t, dim=1)
        return nn.functional.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True)
