"""What every retriever does: index one corpus, answer batches of queries with top-k hits.

A :class:`Retriever` holds one corpus at a time. ``index(ids, texts)`` encodes it (timed), and
``search(queries, k)`` returns one ``{doc_id: score}`` dict per query, best first. Underneath,
``search_rows(queries, k)`` answers in row numbers of the corpus (``ids[row]`` is the id), which
is what negative mining uses: its miners load a saved index without holding the ids.

``doc_matrix`` / ``query_matrix(queries)`` are the vectors in one column space (terms, tokens or
embedding dimensions), for sparsity statistics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

DOC_CHUNK = 262_144
"""Documents scored at once by :func:`top_k` (bounds memory to ``queries x DOC_CHUNK`` floats)."""

RowHits = tuple[np.ndarray, np.ndarray]
"""One query's hits: ``(rows, scores)``, best first; equal scores in row order."""


def top_k(
    score_chunk: Callable[[int, int], Any],
    n_docs: int,
    n_queries: int,
    k: int,
    *,
    positive_only: bool = False,
) -> list[RowHits]:
    """Exact top ``k`` rows per query, scoring the documents in chunks of :data:`DOC_CHUNK`.

    ``score_chunk(start, stop)`` returns the ``[n_queries, stop - start]`` scores of documents
    ``start..stop``. With ``positive_only``, hits scoring 0 or less are dropped (sparse and BM25:
    no term in common). Equal scores are ordered by row, so results never depend on the chunking.
    """
    k = min(k, n_docs)
    if k <= 0 or n_queries == 0:
        return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(n_queries)]
    best_s = np.full((n_queries, 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((n_queries, 0), dtype=np.int64)
    for start in range(0, n_docs, DOC_CHUNK):
        stop = min(start + DOC_CHUNK, n_docs)
        scores = np.hstack([best_s, np.asarray(score_chunk(start, stop), dtype=np.float32)])
        rows = np.hstack(
            [best_i, np.broadcast_to(np.arange(start, stop), (n_queries, stop - start))]
        )
        if scores.shape[1] > k:
            keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            scores = np.take_along_axis(scores, keep, 1)
            rows = np.take_along_axis(rows, keep, 1)
        best_s, best_i = scores, rows
    order = np.lexsort((best_i, -best_s), axis=1)
    best_s = np.take_along_axis(best_s, order, 1)
    best_i = np.take_along_axis(best_i, order, 1)
    if not positive_only:
        return list(zip(best_i, best_s, strict=True))
    return [(i[s > 0], s[s > 0]) for i, s in zip(best_i, best_s, strict=True)]


EncodeFn = Callable[[list[str]], Any]
"""Encodes document texts to a matrix; swaps in distributed encoding (a Ray Data actor pool)."""


class Retriever:
    """Base class: subclasses implement ``encode_documents``, ``query_matrix``, ``search_rows``.

    ``encode_fn``, when given, replaces ``encode_documents`` for ``index`` (same output);
    ``show_progress`` lets a model-based retriever show a progress bar while encoding a corpus.
    """

    kind: str = "retriever"

    def __init__(
        self, name: str, *, encode_fn: EncodeFn | None = None, show_progress: bool = False
    ) -> None:
        self.name = name
        self.encode_fn = encode_fn
        self.show_progress = show_progress
        self.ids: list[str] | None = None
        self.index_seconds = 0.0
        self._doc_vectors: Any = None

    # ------------------------------------------------------------------ building
    def index(self, ids: Sequence[str] | None, texts: Sequence[str]) -> Retriever:
        """Encode one corpus (replacing any earlier one); the time it took is ``index_seconds``.

        ``ids=None`` keeps no ids (rows only, for ``search_rows``): a mining index for a corpus
        too large to hold its ids twice.
        """
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        start = time.perf_counter()
        encode = self.encode_fn or self.encode_documents
        self._doc_vectors = encode(list(texts))
        self.ids = list(ids) if ids is not None else None
        self.index_seconds = time.perf_counter() - start
        return self

    def encode_documents(self, texts: list[str]) -> Any:
        """The document vectors of ``texts`` (one row each); what ``index`` stores."""
        raise NotImplementedError

    @property
    def doc_matrix(self) -> Any:
        """The document vectors of the indexed corpus, row ``i`` for ``ids[i]``."""
        return self._doc_vectors

    @property
    def num_docs(self) -> int:
        return 0 if self._doc_vectors is None else self._doc_vectors.shape[0]

    @property
    def docs_per_s(self) -> float:
        return self.num_docs / self.index_seconds if self.index_seconds > 0 else 0.0

    # ------------------------------------------------------------------ searching
    def search_rows(self, queries: Sequence[str], k: int) -> list[RowHits]:
        """Top ``k`` ``(rows, scores)`` per query (see :data:`RowHits`)."""
        raise NotImplementedError

    def query_matrix(self, queries: Sequence[str]) -> Any:
        """Query vectors in the column space of :attr:`doc_matrix`."""
        raise NotImplementedError

    def search(
        self, queries: Sequence[str], k: int = 100, batch_size: int = 256
    ) -> list[dict[str, float]]:
        """``{doc_id: score}`` of the top ``k`` documents for each query, best first."""
        queries = list(queries)
        out: list[dict[str, float]] = []
        for start in range(0, len(queries), batch_size):
            out.extend(self._search(queries[start : start + batch_size], k))
        return out

    def search_one(self, query: str, k: int = 100) -> dict[str, float]:
        """One query end to end (encode + search), as an online request runs."""
        return self._search([query], k)[0]

    def _search(self, queries: list[str], k: int) -> list[dict[str, float]]:
        if self.ids is None:
            raise RuntimeError(f"{self.name}: no ids (index a corpus, or use search_rows)")
        ids = self.ids
        return [
            {ids[r]: float(s) for r, s in zip(rows.tolist(), scores.tolist(), strict=True)}
            for rows, scores in self.search_rows(queries, k)
        ]

    def close(self) -> None:
        """Release what the retriever holds (indexes on a server, temporary files)."""
