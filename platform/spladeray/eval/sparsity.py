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


class DocSparsity:
    """The document side of :func:`sparsity_stats`, accumulated batch by batch.

    It keeps the histogram of active dimensions and each token's document frequency: memory
    grows with the vocabulary and the longest document, never with the number of documents, so
    the actors that encode a corpus return one per batch and the driver merges them.
    """

    def __init__(self) -> None:
        self.n = 0
        self.hist = np.zeros(0, dtype=np.int64)  # hist[k]: documents with k active dims
        self.df = np.zeros(0, dtype=np.int64)  # df[j]: documents with w_j > 0

    @staticmethod
    def _grow(a: np.ndarray, size: int) -> np.ndarray:
        return a if a.size >= size else np.concatenate([a, np.zeros(size - a.size, a.dtype)])

    def _merge(self, n: int, hist: np.ndarray, df: np.ndarray) -> DocSparsity:
        self.n += n
        self.hist = self._grow(self.hist, hist.size)
        self.hist[: hist.size] += hist
        self.df = self._grow(self.df, df.size)
        self.df[: df.size] += df
        return self

    def add(self, documents) -> DocSparsity:
        """Count a batch of document vectors (sparse or dense rows)."""
        d = _as_csr(documents)
        d.eliminate_zeros()
        return self._merge(
            d.shape[0], np.bincount(np.diff(d.indptr)), np.bincount(d.indices).astype(np.int64)
        )

    def merge(self, other: DocSparsity) -> DocSparsity:
        return self._merge(other.n, other.hist, other.df)

    def to_json(self) -> dict:
        tokens = np.flatnonzero(self.df)
        return {
            "n": self.n,
            "hist": self.hist.tolist(),
            "tokens": tokens.tolist(),
            "df": self.df[tokens].tolist(),
        }

    @classmethod
    def from_json(cls, data: dict) -> DocSparsity:
        tokens = np.asarray(data["tokens"], dtype=np.int64)
        df = np.zeros(int(tokens.max()) + 1 if tokens.size else 0, dtype=np.int64)
        df[tokens] = np.asarray(data["df"], dtype=np.int64)
        return cls()._merge(int(data["n"]), np.asarray(data["hist"], dtype=np.int64), df)

    def _percentile(self, q: float) -> float:
        """``np.percentile(dims, q)`` (linear interpolation) from the histogram."""
        cum = np.cumsum(self.hist)
        pos = q / 100.0 * (self.n - 1)
        lo, hi = int(np.floor(pos)), int(np.ceil(pos))
        v_lo = float(np.searchsorted(cum, lo, side="right"))
        v_hi = float(np.searchsorted(cum, hi, side="right"))
        return v_lo + (v_hi - v_lo) * (pos - lo)

    def stats(self, queries) -> dict[str, float]:
        """What :func:`sparsity_stats` gives for ``queries`` and the documents counted."""
        q = _as_csr(queries)
        q_avg, q_p95 = _summary(active_dims(q))
        if self.n == 0:
            d_avg = d_p95 = 0.0
        else:
            d_avg = float(np.arange(self.hist.size) @ self.hist / self.n)
            d_p95 = self._percentile(95)
        flops = 0.0
        if q.shape[0] and self.n:
            q.eliminate_zeros()
            width = max(q.shape[1], self.df.size)
            p_q = np.bincount(q.indices, minlength=width) / q.shape[0]
            p_d = self._grow(self.df, width) / self.n
            flops = float(p_q @ p_d)
        return {
            "query_dims_avg": q_avg,
            "query_dims_p95": q_p95,
            "doc_dims_avg": d_avg,
            "doc_dims_p95": d_p95,
            "flops": flops,
        }
