"""InfoNCE (multiple-negatives ranking) with in-batch and hard negatives, gathered over ranks.

For query ``q_i`` with positive ``d_i+`` and the candidate set ``D`` = every positive and every hard
negative of the *global* batch (all DDP ranks)::

    L = -1/B  sum_i  log( exp(s(q_i, d_i+) / T) / sum_{d in D} exp(s(q_i, d) / T) )

``s`` is the dot product of sparse vectors and ``T`` the temperature. Documents are gathered from
all ranks *with gradient* (:func:`all_gather_with_grad`), so 8 workers see 8x the negatives and
each document receives the gradient of every rank's queries.

``T`` sets how the model wins: SPLADE dot products are unnormalised (20-40 for splade-tiny on
SciFact), so at ``T = 1`` the softmax is already sharp and the cheapest way down is to delete the
terms a query shares with its negatives, i.e. the expansion terms (active dimensions collapse). A
larger ``T`` spreads the gradient over all candidates and keeps them; the FLOPS regulariser then
sets the sparsity. docs/train-sweeps.md has the measurements.
"""

from __future__ import annotations

import torch
from torch import nn

from spladeray.train.losses.base import SparseBatch
from spladeray.train.losses.distributed import all_gather_with_grad, rank


class InfoNCELoss(nn.Module):
    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, batch: SparseBatch) -> torch.Tensor:
        local_docs = batch.documents  # [B(1+n), V]
        docs = all_gather_with_grad(local_docs)
        logits = batch.queries @ docs.T / self.temperature  # [B, W * B(1+n)]
        b = batch.queries.shape[0]
        labels = torch.arange(b, device=logits.device) + rank() * local_docs.shape[0]
        return nn.functional.cross_entropy(logits.float(), labels)
