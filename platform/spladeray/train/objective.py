"""The training objective: the configured losses plus the sparsity regulariser and its schedule.

As sentence-transformers' ``SpladeLoss`` wraps a ranking loss with FLOPS regularisers, one
micro-batch's objective at optimizer step ``t`` is::

    L(t) = sum_k w_k * loss_k(Q, D)  +  lambda_d(t) * R(D)  +  lambda_q(t) * R(Q)

    lambda_x(t) = lambda_x * min(1, (t / T)^2)

``loss_k`` and ``w_k`` are ``train.losses`` (InfoNCE, MarginMSE, KL; :mod:`spladeray.train.losses`),
``R`` is FLOPS or L1 over the global batch (:class:`FlopsRegularizer`), ``T`` is
``regularizer.warmup_steps`` (default ``max_steps // 3``). Doc-only (inference-free) models have
no query term: their queries are the IDF table, not the model. With ``idf_aware`` the document
term regularises ``idf_j * w_ij``, the weight a document contributes under the IDF query.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from spladeray.train.losses import FlopsRegularizer, SparseBatch, build_loss
from spladeray.train.schedules import quadratic_warmup


@dataclass
class ObjectiveOutput:
    """``total`` to differentiate, and every named term (detached, on the training device)."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


class SpladeObjective(nn.Module):
    """``L(t)`` of the module docstring, from a :class:`spladeray.config.TrainConfig`."""

    def __init__(self, train_cfg, *, doc_only: bool) -> None:
        super().__init__()
        self.names = [lc.name for lc in train_cfg.losses]
        self.weights = [lc.weight for lc in train_cfg.losses]
        self.losses = nn.ModuleList(build_loss(lc) for lc in train_cfg.losses)
        reg = train_cfg.regularizer
        self.regularizer = FlopsRegularizer(reg.kind)
        self.query_lambda = reg.query_lambda
        self.document_lambda = reg.document_lambda
        self.warmup_steps = train_cfg.regularizer_warmup_steps
        self.idf_aware = reg.idf_aware
        self.doc_only = doc_only

    def lambdas(self, step: int) -> dict[str, float]:
        """``lambda/query`` and ``lambda/document`` at optimizer step ``step``."""
        query = (
            0.0 if self.doc_only else quadratic_warmup(self.query_lambda, step, self.warmup_steps)
        )
        return {
            "lambda/query": query,
            "lambda/document": quadratic_warmup(self.document_lambda, step, self.warmup_steps),
        }

    def forward(self, batch: SparseBatch, step: int) -> ObjectiveOutput:
        kind = self.regularizer.kind
        terms: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=batch.queries.device)
        for name, weight, loss in zip(self.names, self.weights, self.losses, strict=True):
            value = loss(batch)
            terms[f"loss/{name}"] = value.detach()
            total = total + weight * value
        lambdas = self.lambdas(step)
        idf = batch.query_idf if self.idf_aware else None  # query_idf: doc-only models only
        reg_d = self.regularizer(batch.documents, idf=idf)
        terms[f"{kind}/document"] = reg_d.detach()
        total = total + lambdas["lambda/document"] * reg_d
        if not self.doc_only:
            reg_q = self.regularizer(batch.queries)
            terms[f"{kind}/query"] = reg_q.detach()
            total = total + lambdas["lambda/query"] * reg_q
        terms["loss"] = total.detach()
        return ObjectiveOutput(total=total, terms=terms)
