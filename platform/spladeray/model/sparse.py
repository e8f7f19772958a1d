"""Sparse vector forms: ``[n, vocab]`` CSR matrices for bulk work, token dicts for people and JSON."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


def dense_to_csr(weights: torch.Tensor) -> sp.csr_matrix:
    """A dense ``[n, vocab]`` tensor to a float32 CSR matrix holding only the non-zeros."""
    w = weights.detach().float().cpu()
    nz = w.nonzero(as_tuple=True)
    rows, cols = nz[0].numpy(), nz[1].numpy()
    data = w[nz].numpy()
    indptr = np.zeros(w.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=w.shape[0]), out=indptr[1:])
    return sp.csr_matrix((data, cols.astype(np.int32), indptr), shape=tuple(w.shape))


def prune(weights: torch.Tensor, top_k: int | None = None, threshold: float = 0.0) -> torch.Tensor:
    """Zero every weight ``<= threshold`` and, with ``top_k``, all but the k largest per row."""
    if threshold > 0:
        weights = torch.where(weights > threshold, weights, torch.zeros_like(weights))
    if top_k is not None and top_k < weights.shape[-1]:
        values, idx = torch.topk(weights, top_k, dim=-1)
        weights = torch.zeros_like(weights).scatter_(-1, idx, values)
    return weights


def csr_to_dicts(matrix: sp.csr_matrix, id_to_token: list[str]) -> list[dict[str, float]]:
    """Rows of a CSR matrix as ``{token: weight}`` dicts (zeros are never stored)."""
    out = []
    indptr, indices, data = matrix.indptr, matrix.indices, matrix.data
    for r in range(matrix.shape[0]):
        lo, hi = indptr[r], indptr[r + 1]
        out.append(
            {id_to_token[i]: float(v) for i, v in zip(indices[lo:hi], data[lo:hi], strict=True)}
        )
    return out


def top_tokens(vector: dict[str, float], k: int = 10) -> list[tuple[str, float]]:
    """The ``k`` heaviest tokens of a vector, heaviest first (ties by token for stable output)."""
    return sorted(vector.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def sparse_dot(a: dict[str, float], b: dict[str, float]) -> float:
    """The dot product of two token dicts."""
    if len(a) > len(b):
        a, b = b, a
    return float(sum(w * b[t] for t, w in a.items() if t in b))
