"""Sparsity of encoded queries and documents: active dimensions and expected FLOPS.

For a set of query vectors ``Q`` and document vectors ``D`` over the same vocabulary::

    p_q(j) = fraction of queries with w_j > 0       p_d(j) = fraction of documents with w_j > 0
    FLOPS  = sum_j p_q(j) * p_d(j)

the expected number of multiply-adds of one query-document dot product (Paria et al. 2020;
the SPLADE papers report it). A dense model of dimension ``n`` has FLOPS = ``n``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def _as_csr(matrix) -> sp.csr_matrix:
    if sp.issparse(matrix):
        return sp.csr_matrix(matrix)
    return sp.csr_matrix(np.asarray(matrix))


def active_dims(matrix) -> np.ndarray:
    """Number of non-zero dimensions per row (sparse or dense input)."""
    m = _as_csr(matrix)
    m.eliminate_zeros()
    return np.diff(m.indptr)


def expected_flops(queries, documents) -> float:
    """``sum_j p_q(j) p_d(j)``; both matrices share their column space."""
    q, d = _as_csr(queries), _as_csr(documents)
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"column spaces differ: {q.shape[1]} vs {d.shape[1]}")
    if q.shape[0] == 0 or d.shape[0] == 0:
        return 0.0
    q.eliminate_zeros()
    d.eliminate_zeros()
    p_q = np.bincount(q.indices, minlength=q.shape[1]) / q.shape[0]
    p_d = np.bincount(d.indices, minlength=d.shape[1]) / d.shape[0]
    return float(p_q @ p_d)


def _summary(dims: np.ndarray) -> tuple[float, float]:
    if dims.size == 0:
        return 0.0, 0.0
    return float(dims.mean()), float(np.percentile(dims, 95))


def sparsity_stats(queries, documents) -> dict[str, float]:
    """Average and p95 active dimensions of queries and documents, and FLOPS."""
    q_avg, q_p95 = _summary(active_dims(queries))
    d_avg, d_p95 = _summary(active_dims(documents))
    return {
        "query_dims_avg": q_avg,
        "query_dims_p95": q_p95,
        "doc_dims_avg": d_avg,
        "doc_dims_p95": d_p95,
        "flops": expected_flops(queries, documents),
    }
