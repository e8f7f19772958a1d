"""InfoNCE (multiple-negatives ranking) with in-batch and hard negatives, gathered over ranks.

For query ``q_i`` with positive ``d_i+`` and the candidate set ``D`` = every positive and every hard
negative of the *global* batch (all DDP ranks)::

    L = -1/B  sum_i  log( exp(s(q_i, d_i+) / T) / sum_{d in D_i} exp(s(q_i, d) / T) )

    D_i = { d in D : d = d_i+  or  d not in P(q_i) }      (with the mask; else D_i = D)

``s`` is the dot product of sparse vectors, ``T`` the temperature and ``P(q_i)`` every positive
of ``q_i`` (the ``query_positive_ids`` column): another row's positive or negative that is also a
positive of ``q_i`` is a false negative, so it leaves ``q_i``'s denominator (its logit is set to
``-inf``) instead of being pushed down. SciFact queries have up to 5 positives and each is a row,
so two rows of one query in a batch would otherwise push each other's positive down. Documents
are matched by id (:func:`spladeray.train.data.id_key`), over all ranks.

Documents are gathered from all ranks *with gradient* (:func:`all_gather_with_grad`), so 8
workers see 8x the negatives and each document receives the gradient of every rank's queries.

``T`` sets how the model wins: SPLADE dot products are unnormalised (20-40 for splade-tiny on
SciFact), so at ``T = 1`` the softmax is already sharp and the cheapest way down is to delete the
terms a query shares with its negatives, i.e. the expansion terms (active dimensions collapse). A
larger ``T`` spreads the gradient over all candidates and keeps them; the FLOPS regulariser then
sets the sparsity. docs/train-sweeps.md has the measurements.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from spladeray.train.losses.base import SparseBatch
from spladeray.train.losses.distributed import all_gather_with_grad, is_distributed, rank


def gather_keys(keys: torch.Tensor) -> torch.Tensor:
    """``keys`` of every rank, concatenated in rank order (no gradient: ids, not values)."""
    if not is_distributed():
        return keys
    parts = [torch.empty_like(keys) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, keys.contiguous())
    return torch.cat(parts)


def false_negative_mask(
    document_keys: torch.Tensor, query_positive_keys: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """``[B, W * B(1+n)]`` true where document ``j`` is a positive of query ``i`` other than its
    labelled one (column ``labels[i]``), i.e. the entries InfoNCE must not count as negatives."""
    mask = (document_keys[None, :, None] == query_positive_keys[:, None, :]).any(-1)
    mask[torch.arange(mask.shape[0], device=mask.device), labels] = False
    return mask


class InfoNCELoss(nn.Module):
    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, batch: SparseBatch) -> torch.Tensor:
        local_docs = batch.documents  # [B(1+n), V]
        docs = all_gather_with_grad(local_docs)
        logits = (batch.queries @ docs.T / self.temperature).float()  # [B, W * B(1+n)]
        b = batch.queries.shape[0]
        labels = torch.arange(b, device=logits.device) + rank() * local_docs.shape[0]
        if batch.document_keys is not None and batch.query_positive_keys is not None:
            keys = gather_keys(batch.document_keys.to(logits.device))
            mask = false_negative_mask(keys, batch.query_positive_keys.to(logits.device), labels)
            logits = logits.masked_fill(mask, float("-inf"))
        return nn.functional.cross_entropy(logits, labels)
