"""Sparse retrieval through an index backend (e.g. OpenSearch), to measure that path.

:class:`IndexedSparseRetriever` encodes like :class:`~spladeray.retrieval.SparseRetriever`, then
writes the vectors into an index named ``eval-<system name>`` (dropped and rebuilt for every
corpus, dropped on ``close``) and answers queries with the backend's own search. Indexing time
covers encoding and the writes. Exact in-memory search needs no index: use the plain
:class:`~spladeray.retrieval.SparseRetriever`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence

from spladeray.index.base import SparseIndex
from spladeray.model import SpladeEncoder
from spladeray.retrieval.base import EncodeFn, RowHits
from spladeray.retrieval.sparse import SparseRetriever

logger = logging.getLogger(__name__)


def index_name(system: str) -> str:
    """``eval-<system>`` made safe for an index name."""
    return "eval-" + (re.sub(r"[^a-z0-9_\-.]+", "-", system.lower()).strip("-.") or "sparse")


class IndexedSparseRetriever(SparseRetriever):
    """A :class:`SpladeEncoder` searched through a :class:`SparseIndex`; see the module docstring."""

    def __init__(
        self,
        encoder: SpladeEncoder,
        backend: SparseIndex,
        name: str = "sparse",
        *,
        encode_fn: EncodeFn | None = None,
        add_batch_size: int = 1000,
        show_progress: bool = False,
    ) -> None:
        super().__init__(encoder, name, encode_fn=encode_fn, show_progress=show_progress)
        self.backend = backend
        self.index_name = index_name(name)
        self.add_batch_size = add_batch_size

    def index(self, ids: Sequence[str], texts: Sequence[str]) -> IndexedSparseRetriever:
        start = time.perf_counter()
        super().index(ids, texts)
        backend, name, matrix = self.backend, self.index_name, self.doc_matrix
        backend.delete(name)
        backend.create(name)
        failed = []
        for a in range(0, len(self.ids), self.add_batch_size):
            b = a + self.add_batch_size
            failed.extend(
                backend.add(name, self.ids[a:b], self.encoder.to_dicts(matrix[a:b])).failed
            )
        if failed:
            logger.warning(
                "%s: %d documents were not indexed (first: %s: %s)",
                self.name,
                len(failed),
                failed[0].id,
                failed[0].error,
            )
        backend.refresh(name)
        self.index_seconds = time.perf_counter() - start
        return self

    def search_rows(self, queries: Sequence[str], k: int) -> list[RowHits]:
        raise NotImplementedError(f"{self.name} searches through its index: use search()")

    def _search(self, queries: list[str], k: int) -> list[dict[str, float]]:
        vectors = self.encoder.encode_queries(queries)
        hits = [self.backend.search(self.index_name, v, size=k) for v in vectors]
        return [{h.id: float(h.score) for h in hs} for hs in hits]

    def close(self) -> None:
        try:
            self.backend.delete(self.index_name)
        except Exception as exc:  # a server gone away must not hide the results
            logger.warning("%s: could not delete index %s: %s", self.name, self.index_name, exc)
