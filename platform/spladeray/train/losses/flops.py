"""Sparsity regularisers over the *global* batch (all DDP ranks), so lambdas mean the same at any
world size.

FLOPS (Paria et al., 2020), over the ``N`` vectors of one kind in the global batch::

    FLOPS(W) = sum_j ( 1/N sum_i |w_ij| )^2

L1, the mean per-vector L1 norm::

    L1(W) = 1/N sum_i sum_j |w_ij|

IDF-aware (doc-only models, whose query weights are the IDF table ``idf_j``): ``w_ij`` is replaced
by ``idf_j * w_ij``, the weight the document actually contributes to a score, so dimensions
that queries weight highly are penalised accordingly.

The column sums ``sum_i |w_ij|`` and ``N`` are summed over ranks with
:func:`all_reduce_with_grad` before squaring: every rank computes the same value, equal to the
value one worker would compute on the concatenated batch (1 worker with batch 2B == 2 workers
with B each), and after DDP's gradient averaging the gradient equals the single-worker gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from spladeray.train.losses.distributed import all_reduce_with_grad


class FlopsRegularizer(nn.Module):
    def __init__(self, kind: str = "flops") -> None:
        super().__init__()
        if kind not in ("flops", "l1"):
            raise ValueError(f"regularizer kind must be 'flops' or 'l1', got {kind!r}")
        self.kind = kind

    def forward(self, vectors: torch.Tensor, idf: torch.Tensor | None = None) -> torch.Tensor:
        w = vectors.float().abs()
        if idf is not None:
            w = w * idf.detach().float().to(w.device)
        # a fill on the device, not a host-to-device copy (which would wait for the GPU)
        n = all_reduce_with_grad(w.new_full((), float(w.shape[0])))
        if self.kind == "flops":
            mean = all_reduce_with_grad(w.sum(dim=0)) / n
            return (mean**2).sum()
        return all_reduce_with_grad(w.sum()) / n
