"""Retrievers under one interface, and exact sparse retrieval with a :class:`SpladeEncoder`.

A :class:`Retriever` indexes one corpus (``index(ids, texts)``), answers batches of queries with
a run (``search``) and single queries for latency (``search_one``), and exposes the vectors it
built (``doc_matrix``, ``query_matrix``) for sparsity statistics. BM25 lives in
:mod:`spladeray.eval.bm25`, dense models in :mod:`spladeray.eval.dense`, the sparse encoder here.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import scipy.sparse as sp

from spladeray.data.beir import doc_text, iter_corpus, load_qrels, load_queries
from spladeray.eval.metrics import DEFAULT_MEASURES, evaluate_run
from spladeray.index.base import SparseIndex
from spladeray.index.local import LocalIndex
from spladeray.model.encoder import SpladeEncoder

logger = logging.getLogger(__name__)

EncodeFn = Callable[[list[str]], Any]
"""Encodes a list of document texts to a matrix (used to swap in distributed encoding)."""


class Retriever:
    """Base class: subclasses implement ``_build`` and ``_search``."""

    name: str = "retriever"
    kind: str = "retriever"
    doc_matrix: Any = None
    index_seconds: float = 0.0
    num_docs: int = 0

    def index(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        """Build the index of one corpus (replacing any earlier one); timed."""
        if len(ids) != len(texts):
            raise ValueError("ids and texts must have the same length")
        start = time.perf_counter()
        self.doc_matrix = self._build(list(ids), list(texts))
        self.index_seconds = time.perf_counter() - start
        self.num_docs = len(ids)

    @property
    def docs_per_s(self) -> float:
        return self.num_docs / self.index_seconds if self.index_seconds > 0 else 0.0

    def search(
        self, queries: Sequence[str], k: int = 100, batch_size: int = 256
    ) -> list[dict[str, float]]:
        """``[{doc_id: score}, ...]`` (top ``k``) for each query, in order."""
        out: list[dict[str, float]] = []
        queries = list(queries)
        for start in range(0, len(queries), batch_size):
            out.extend(self._search(queries[start : start + batch_size], k))
        return out

    def search_one(self, query: str, k: int = 100) -> dict[str, float]:
        """One query end to end (encode + search), as an online request would run."""
        return self._search([query], k)[0]

    def query_matrix(self, queries: Sequence[str]) -> Any:
        """Query vectors in the column space of :attr:`doc_matrix` (for sparsity)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release indexes and temporary files."""

    def _build(self, ids: list[str], texts: list[str]) -> Any:
        raise NotImplementedError

    def _search(self, queries: Sequence[str], k: int) -> list[dict[str, float]]:
        raise NotImplementedError


def _index_name(name: str) -> str:
    return "eval-" + (re.sub(r"[^a-z0-9_\-.]+", "-", name.lower()).strip("-.") or "sparse")


class SparseRetriever(Retriever):
    """A :class:`SpladeEncoder` searched through a :class:`SparseIndex`.

    With no ``index`` the search is exact on a temporary embedded :class:`LocalIndex`; pass an
    index from :func:`spladeray.index.open_index` (e.g. OpenSearch) to measure that path. The
    index is named ``eval-<name>`` and is dropped and rebuilt for every corpus.
    """

    kind = "sparse"

    def __init__(
        self,
        encoder: SpladeEncoder,
        name: str = "sparse",
        *,
        index: SparseIndex | None = None,
        index_dir: str | Path | None = None,
        encode_fn: EncodeFn | None = None,
        add_batch_size: int = 1000,
        show_progress: bool = False,
    ) -> None:
        self.encoder = encoder
        self.name = name
        self._tmp = None
        if index is None:
            if index_dir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="spladeray-eval-")
                index_dir = self._tmp.name
            index = LocalIndex(index_dir)
        self.sparse_index = index
        self.index_name = _index_name(name)
        self.encode_fn = encode_fn
        self.add_batch_size = add_batch_size
        self.show_progress = show_progress

    def _build(self, ids: list[str], texts: list[str]) -> sp.csr_matrix:
        if self.encode_fn is not None:
            matrix = self.encode_fn(texts)
        else:
            matrix = self.encoder.encode_csr(texts, "document", show_progress=self.show_progress)
        index, name = self.sparse_index, self.index_name
        index.delete(name)
        index.create(name)
        failed = []
        for start in range(0, len(ids), self.add_batch_size):
            stop = start + self.add_batch_size
            result = index.add(name, ids[start:stop], self.encoder.to_dicts(matrix[start:stop]))
            failed.extend(result.failed)
        if failed:
            logger.warning(
                "%s: %d documents were not indexed (first: %s: %s)",
                self.name,
                len(failed),
                failed[0].id,
                failed[0].error,
            )
        refresh = getattr(index, "refresh", None)
        if callable(refresh):
            refresh(name)
        return matrix

    def _search(self, queries: Sequence[str], k: int) -> list[dict[str, float]]:
        vectors = self.encoder.encode_queries(list(queries))
        search_many = getattr(self.sparse_index, "search_many", None)
        if callable(search_many):
            hits = search_many(self.index_name, vectors, size=k)
        else:
            hits = [self.sparse_index.search(self.index_name, v, size=k) for v in vectors]
        return [{h.id: float(h.score) for h in hs} for hs in hits]

    def query_matrix(self, queries: Sequence[str]) -> sp.csr_matrix:
        return self.encoder.encode_csr(list(queries), "query")

    def close(self) -> None:
        try:
            self.sparse_index.delete(self.index_name)
        except Exception as exc:  # a server gone away must not hide the results
            logger.warning("%s: could not delete index %s: %s", self.name, self.index_name, exc)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def sparse_run(
    encoder: SpladeEncoder,
    beir_dir: str | Path,
    split: str,
    *,
    depth: int = 100,
    corpus_limit: int | None = None,
    index_dir: str | Path | None = None,
    show_progress: bool = False,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    """Encode corpus and the split's queries, search exactly; returns ``(run, qrels)``.

    With ``corpus_limit``, qrels are restricted to the documents that were indexed (and queries
    left without a relevant document are dropped), so small smoke runs stay meaningful.
    """
    docs = list(iter_corpus(beir_dir, corpus_limit))
    qrels = restrict_qrels(
        load_qrels(beir_dir, split),
        load_queries(beir_dir),
        {d["_id"] for d in docs} if corpus_limit else None,
    )
    queries = load_queries(beir_dir)
    retriever = SparseRetriever(encoder, index_dir=index_dir, show_progress=show_progress)
    try:
        retriever.index([d["_id"] for d in docs], [doc_text(d) for d in docs])
        qids = list(qrels)
        results = retriever.search([queries[q] for q in qids], k=depth)
    finally:
        retriever.close()
    return dict(zip(qids, results, strict=True)), qrels


def restrict_qrels(
    qrels: dict[str, dict[str, int]], queries: dict[str, str], doc_ids: set[str] | None = None
) -> dict[str, dict[str, int]]:
    """Keep judged queries that have a text; with ``doc_ids``, only judgments on those documents
    (queries left without a relevant document are dropped)."""
    out = {}
    for qid, rel in qrels.items():
        if qid not in queries:
            continue
        if doc_ids is not None:
            rel = {d: r for d, r in rel.items() if d in doc_ids}
            if not any(r > 0 for r in rel.values()):
                continue
        if rel:
            out[qid] = rel
    return out


def evaluate_encoder(
    encoder: SpladeEncoder,
    beir_dir: str | Path,
    split: str,
    *,
    measures=DEFAULT_MEASURES,
    corpus_limit: int | None = None,
) -> dict[str, float]:
    """``{measure: value}`` of exact sparse retrieval (e.g. nDCG@10, R@100) on a BEIR split."""
    run, qrels = sparse_run(encoder, beir_dir, split, corpus_limit=corpus_limit)
    return evaluate_run(run, qrels, measures)
