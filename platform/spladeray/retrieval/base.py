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

# The one exact top-k lives in spladeray.retrieval.topk; these names stay importable from here.
from spladeray.retrieval.topk import DOC_CHUNK, RowHits, top_k  # noqa: E402

__all__ = ["DOC_CHUNK", "EncodeFn", "Retriever", "RowHits", "top_k"]


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
