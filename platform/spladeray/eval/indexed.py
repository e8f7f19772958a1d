"""Sparse retrieval through an index backend, with the one search path that serving uses.

:class:`IndexedSparseRetriever` streams a corpus into an index named ``eval-<system name>``
(dropped and rebuilt for every corpus, dropped on ``close``) and answers queries through
:mod:`spladeray.index.search`: the same query limits, sparse search and hybrid (sparse + the
index's BM25 fused by RRF) as ``POST /search``, so the hybrid that is served is the hybrid that
is measured.

Nothing per document stays in the process that runs the evaluation:

- in-process: the corpus is read in batches of ``add_batch_size``; each batch is encoded and
  written, then dropped;
- ``distributed`` (an actor pool): the encoder actors (:mod:`spladeray.index.encoding`) read the
  corpus from a Ray Dataset, encode it and write it into the index themselves; each returns one
  summary per batch (count, failures by id, sparsity aggregates). Searches then run in an
  :class:`IndexSearcher` actor, so the index is opened there, not in the driver.

Sparsity statistics come from :class:`~spladeray.eval.sparsity.DocSparsity` aggregates, equal
to what :func:`~spladeray.eval.sparsity.sparsity_stats` gives over the whole matrix. Indexing
time covers reading, encoding and the writes.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from spladeray.eval.sparsity import DocSparsity
from spladeray.index import search as search_path
from spladeray.index.base import Failure
from spladeray.index.opensearch import MAX_CLAUSE_COUNT
from spladeray.model import SpladeEncoder
from spladeray.retrieval.base import RowHits
from spladeray.retrieval.sparse import SparseRetriever

logger = logging.getLogger(__name__)

MAX_FAILURES_KEPT = 20
"""Failures kept by id for the log; all are counted."""


def index_name(system: str) -> str:
    """``eval-<system>`` made safe for an index name."""
    return "eval-" + (re.sub(r"[^a-z0-9_\-.]+", "-", system.lower()).strip("-.") or "sparse")


class IndexSearcher:
    """A Ray actor that opens the index and answers query batches through the one search path
    (the driver then never opens, so never holds, the index)."""

    def __init__(self, index_cfg, tokenizer=None) -> None:
        from spladeray.index import open_index

        self.index = open_index(index_cfg, tokenizer=tokenizer)

    def search_many(self, name, vectors, size, texts, hybrid, rrf_k) -> list[dict[str, float]]:
        hits = search_path.search_many(
            self.index, name, vectors, size, texts=texts, hybrid=hybrid, rrf_k=rrf_k
        )
        return [{h.hit.id: float(h.hit.score) for h in row} for row in hits]


class IndexedSparseRetriever(SparseRetriever):
    """A :class:`SpladeEncoder` searched through an index; see the module docstring.

    ``pool`` (keyword arguments of :func:`spladeray.index.encoding.encode_dataset`: ``factory``,
    ``num_actors``, ``batch_size``, ``num_gpus``) moves encoding, writing and searching to Ray
    actors.
    """

    def __init__(
        self,
        encoder: SpladeEncoder,
        index_cfg,
        name: str = "sparse",
        *,
        pool: dict[str, Any] | None = None,
        hybrid: bool = False,
        rrf_k: float = search_path.RRF_K,
        max_query_terms: int = MAX_CLAUSE_COUNT,
        add_batch_size: int = 1000,
        show_progress: bool = False,
    ) -> None:
        from spladeray.index import open_index

        super().__init__(encoder, name, show_progress=show_progress)
        self.index_cfg, self.pool = index_cfg, pool
        self.backend = open_index(index_cfg, tokenizer=encoder.tokenizer)
        self.index_name = index_name(name)
        self.hybrid, self.rrf_k, self.max_query_terms = hybrid, rrf_k, max_query_terms
        self.add_batch_size = add_batch_size
        self.doc_stats = DocSparsity()
        self._searcher = None

    # ------------------------------------------------------------------ indexing
    def index_corpus(self, corpus) -> IndexedSparseRetriever:
        """Stream ``corpus`` (:class:`spladeray.eval.runner.Corpus`) into the index."""
        start = time.perf_counter()
        self._reset()
        if self.pool is None:
            for ids, texts in corpus.batches(self.add_batch_size):
                self._add(ids, texts)
        else:
            from spladeray.index.encoding import IndexSink, drain, encode_dataset

            pool = dict(self.pool)
            sink = IndexSink(self.index_cfg, self.index_name, store_text=self.hybrid)
            encoded = encode_dataset(
                corpus.dataset(), pool.pop("factory"), "sparse", sink=sink, **pool
            )
            for summary in drain(encoded):
                self._count(
                    summary["indexed"],
                    [Failure(**f) for f in summary["failed"]],
                    DocSparsity.from_json(summary["sparsity"]),
                )
        self._finish(start)
        return self

    def index(self, ids: Sequence[str], texts: Sequence[str]) -> IndexedSparseRetriever:
        """Index given lists (in process, in batches of ``add_batch_size``)."""
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        start = time.perf_counter()
        self._reset()
        for a in range(0, len(ids), self.add_batch_size):
            b = a + self.add_batch_size
            self._add(list(ids[a:b]), list(texts[a:b]))
        self._finish(start)
        return self

    def _reset(self) -> None:
        self.backend.delete(self.index_name)
        self.backend.create(self.index_name)
        self.doc_stats, self.indexed, self.failed, self.failures = DocSparsity(), 0, 0, []

    def _add(self, ids: list[str], texts: list[str]) -> None:
        csr = self.encoder.encode_csr(texts, "document", show_progress=self.show_progress)
        fields = [{"text": t} for t in texts] if self.hybrid else None
        result = self.backend.add(self.index_name, ids, self.encoder.to_dicts(csr), fields)
        self._count(result.indexed, result.failed, DocSparsity().add(csr))

    def _count(self, indexed: int, failed: list[Failure], stats: DocSparsity) -> None:
        self.indexed += indexed
        self.failed += len(failed)
        self.failures.extend(failed[: MAX_FAILURES_KEPT - len(self.failures)])
        self.doc_stats.merge(stats)

    def _finish(self, start: float) -> None:
        if self.failed:
            first = self.failures[0]
            logger.warning(
                "%s: %d documents were not indexed (first: %s: %s)",
                self.name,
                self.failed,
                first.id,
                first.error,
            )
        self.backend.refresh(self.index_name)
        self.index_seconds = time.perf_counter() - start

    @property
    def num_docs(self) -> int:
        return self.doc_stats.n

    @property
    def doc_matrix(self):
        raise NotImplementedError(
            f"{self.name} keeps its vectors in its index: use sparsity() for statistics"
        )

    def sparsity(self, queries: Sequence[str]) -> dict[str, float]:
        """:func:`~spladeray.eval.sparsity.sparsity_stats` of ``queries`` and the corpus."""
        return self.doc_stats.stats(self.query_matrix(queries))

    # ------------------------------------------------------------------ searching
    def search_rows(self, queries: Sequence[str], k: int) -> list[RowHits]:
        raise NotImplementedError(f"{self.name} searches through its index: use search()")

    def _search(self, queries: list[str], k: int) -> list[dict[str, float]]:
        limited = [
            search_path.limit(v, t, max_terms=self.max_query_terms, hybrid=self.hybrid)
            for v, t in zip(self.encoder.encode_queries(queries), queries, strict=True)
        ]
        vectors, texts = [q.vector for q in limited], [q.text for q in limited]
        if self.pool is not None:
            import ray

            if self._searcher is None:
                self._searcher = (
                    ray.remote(IndexSearcher)
                    .options(num_cpus=0)
                    .remote(self.index_cfg, self.encoder.tokenizer)
                )
            call = self._searcher.search_many.remote(
                self.index_name, vectors, k, texts, self.hybrid, self.rrf_k
            )
            return ray.get(call)
        hits = search_path.search_many(
            self.backend,
            self.index_name,
            vectors,
            k,
            texts=texts,
            hybrid=self.hybrid,
            rrf_k=self.rrf_k,
        )
        return [{h.hit.id: float(h.hit.score) for h in row} for row in hits]

    def close(self) -> None:
        if self._searcher is not None:
            import ray

            ray.kill(self._searcher)
            self._searcher = None
        try:
            self.backend.delete(self.index_name)
        except Exception as exc:  # a server gone away must not hide the results
            logger.warning("%s: could not delete index %s: %s", self.name, self.index_name, exc)
