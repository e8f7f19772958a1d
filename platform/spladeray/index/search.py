"""The one search path over a :class:`~spladeray.index.base.SparseIndex`: query limits, sparse
search, hybrid (sparse + BM25 fused by RRF) and explain.

Serving's ``/search`` (:mod:`spladeray.serving.api`), the demo and evaluation's index-backed
systems (:mod:`spladeray.eval.indexed`) all call these functions, so the hybrid that is served
is the hybrid that is measured.

- :func:`limit` brings a query within the limits OpenSearch enforces (every backend, so answers
  never depend on the backend): at most ``max_terms`` terms, the heaviest, weights clipped to
  (0, 64], unusable names dropped (:func:`spladeray.index.opensearch.limit_query`); for a hybrid
  search, the BM25 leg's text is cut to the clause limit (:func:`lexical_query`). What changed is
  returned as ``warnings`` (``{"code", "count", "message"}``).
- :func:`search` answers one query; with ``hybrid``, the sparse and the BM25 (``text_search``)
  legs each retrieve ``hybrid_depth(size)`` documents and are fused by reciprocal rank fusion
  (:func:`spladeray.retrieval.fusion.rrf`)::

      rrf(d) = 1 / (k + rank_sparse(d)) + 1 / (k + rank_bm25(d))

- :func:`explain` gives, per hit, the tokens the query and the document share with
  ``query_weight * doc_weight``, largest first (their sum is the sparse score).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spladeray.index.base import Hit, IndexNotFoundError, SparseIndex
from spladeray.index.opensearch import (
    MAX_FEATURE_NAME_BYTES,
    MAX_QUERY_WEIGHT,
    TEXT_FIELDS,
    QueryLimitReport,
    limit_query,
)
from spladeray.retrieval.fusion import rrf

WORD = re.compile(r"\w+")

RRF_K = 60.0
"""RRF's ``k`` unless a caller names one (``serve.rrf_k``)."""


def hybrid_depth(size: int) -> int:
    """Documents each leg of a hybrid search retrieves for ``size`` fused hits."""
    return max(size * 5, 50)


# ----------------------------------------------------------------------------- query limits
@dataclass
class Query:
    """A query within the limits: the sparse ``vector``, the BM25 ``text``, what changed."""

    vector: dict[str, float]
    text: str
    warnings: list[dict[str, Any]] = field(default_factory=list)


def query_warnings(report: QueryLimitReport, max_terms: int) -> list[dict[str, Any]]:
    """``[{"code", "count", "message"}]`` for each way :func:`limit_query` changed a query."""
    out = []

    def warn(code: str, count: int, message: str) -> None:
        if count:
            out.append({"code": code, "count": count, "message": message})

    warn(
        "query_terms_pruned",
        report.pruned,
        f"the query had {report.terms} terms; the {report.pruned} lightest were dropped to "
        f"keep {max_terms} (serve.max_query_terms; OpenSearch's "
        "indices.query.bool.max_clause_count)",
    )
    warn(
        "query_weights_clipped",
        report.clipped,
        f"{report.clipped} query weights were above {MAX_QUERY_WEIGHT:g} and were clipped to it "
        "(rank_feature boosts must be in (0, 64])",
    )
    warn(
        "query_weights_dropped",
        report.bad_weights,
        f"{report.bad_weights} query terms had a weight that is not a finite positive number "
        "and were dropped",
    )
    warn(
        "feature_names_too_long",
        report.long_names,
        f"{report.long_names} query terms were longer than Lucene's limit of "
        f"{MAX_FEATURE_NAME_BYTES} bytes and were dropped",
    )
    warn(
        "feature_names_invalid",
        report.bad_names,
        f"{report.bad_names} query terms were not non-empty strings and were dropped",
    )
    return out


def lexical_query(text: str, max_clauses: int) -> tuple[str, dict[str, Any] | None]:
    """The BM25 leg's query text within OpenSearch's clause limit, and a warning if it was cut.

    ``multi_match`` over the text fields makes one clause per word and field, so at most
    ``max_clauses // len(TEXT_FIELDS)`` words are kept (words as the standard analyzer roughly
    splits them: runs of letters and digits), the first ones.
    """
    keep = max(1, max_clauses // len(TEXT_FIELDS))
    words = WORD.findall(text)
    if len(words) <= keep:
        return text, None
    dropped = len(words) - keep
    warning = {
        "code": "lexical_query_truncated",
        "count": dropped,
        "message": f"the BM25 query had {len(words)} words; the last {dropped} were dropped to "
        f"keep {keep} ({len(TEXT_FIELDS)} fields each, within serve.max_query_terms)",
    }
    return " ".join(words[:keep]), warning


def limit(
    vector: Mapping[str, float], text: str = "", *, max_terms: int, hybrid: bool = False
) -> Query:
    """``vector`` (and, for a hybrid search, ``text``) within the limits; see the docstring."""
    qvec, report = limit_query(vector, max_terms)
    warnings = query_warnings(report, max_terms)
    if hybrid:
        text, cut = lexical_query(text, max_terms)
        warnings += [cut] if cut else []
    return Query(qvec, text, warnings)


# ----------------------------------------------------------------------------- search
@dataclass
class ScoredHit:
    """A hit of :func:`search`: the fused score in ``hit``, each leg's own score beside it."""

    hit: Hit
    sparse_score: float | None
    bm25_score: float | None


def search(
    index: SparseIndex,
    name: str,
    vector: Mapping[str, float],
    size: int = 10,
    *,
    text: str = "",
    hybrid: bool = False,
    rrf_k: float = RRF_K,
) -> list[ScoredHit]:
    """Top ``size`` documents of ``name``; raises :class:`IndexNotFoundError` for a missing index.

    ``vector`` should come from :func:`limit` (callers that skip it must respect the backend's
    limits themselves). With ``hybrid``, ``text`` is the BM25 leg's query.
    """
    if not index.exists(name):
        raise IndexNotFoundError(f"index {name!r} does not exist")
    if not hybrid:
        return [ScoredHit(h, h.score, None) for h in index.search(name, vector, size)]
    depth = hybrid_depth(size)
    return fuse_legs(
        index.search(name, vector, depth), index.text_search(name, text, depth), size, rrf_k
    )


def search_many(
    index: SparseIndex,
    name: str,
    vectors: Sequence[Mapping[str, float]],
    size: int = 10,
    *,
    texts: Sequence[str] | None = None,
    hybrid: bool = False,
    rrf_k: float = RRF_K,
) -> list[list[ScoredHit]]:
    """:func:`search` for a batch of queries (one ``search_many`` call for the sparse leg)."""
    if not index.exists(name):
        raise IndexNotFoundError(f"index {name!r} does not exist")
    if not hybrid:
        return [
            [ScoredHit(h, h.score, None) for h in hits]
            for hits in index.search_many(name, vectors, size)
        ]
    if texts is None or len(texts) != len(vectors):
        raise ValueError("a hybrid search needs one text per query vector")
    depth = hybrid_depth(size)
    sparse = index.search_many(name, vectors, depth)
    return [
        fuse_legs(hits, index.text_search(name, text, depth), size, rrf_k)
        for hits, text in zip(sparse, texts, strict=True)
    ]


def fuse_legs(
    sparse: Sequence[Hit], lexical: Sequence[Hit], size: int, rrf_k: float = RRF_K
) -> list[ScoredHit]:
    """The top ``size`` of the sparse and BM25 legs fused by RRF (see the module docstring)."""
    by_id = {h.id: h for h in lexical} | {h.id: h for h in sparse}
    sparse_scores = {h.id: h.score for h in sparse}
    bm25_scores = {h.id: h.score for h in lexical}
    ranked = [[h.id for h in sparse], [h.id for h in lexical]]
    fused = rrf(ranked, k=rrf_k, depth=size)
    return [
        ScoredHit(Hit(d, s, by_id[d].fields), sparse_scores.get(d), bm25_scores.get(d))
        for d, s in fused.items()
    ]


# ----------------------------------------------------------------------------- explain
@dataclass
class Contribution:
    """One token a query and a document share: ``contribution = query_weight * doc_weight``."""

    token: str
    query_weight: float
    doc_weight: float
    contribution: float


def contributions(query: Mapping[str, float], document: Mapping[str, float]) -> list[Contribution]:
    """The shared tokens of two vectors with their products, largest first."""
    shared = [
        Contribution(t, w, document[t], w * document[t]) for t, w in query.items() if t in document
    ]
    return sorted(shared, key=lambda c: -c.contribution)


def explain(
    index: SparseIndex, name: str, vector: Mapping[str, float], hit_ids: Sequence[str]
) -> list[list[Contribution]]:
    """Per hit id: :func:`contributions` of the query and the document's stored vector."""
    return [contributions(vector, index.get(name, doc_id) or {}) for doc_id in hit_ids]
