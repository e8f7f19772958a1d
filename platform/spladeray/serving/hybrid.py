"""Reciprocal rank fusion of the sparse and lexical legs of hybrid ``/search``.

The lexical leg is the index's own :meth:`~spladeray.index.base.SparseIndex.text_search`
(OpenSearch: ``multi_match``; the embedded index: BM25 with ``bm25s``).
"""

from __future__ import annotations

from collections.abc import Sequence

from spladeray.index.base import Hit


def rrf(runs: Sequence[Sequence[Hit]], k: float = 60.0, size: int = 10) -> list[tuple[str, float]]:
    """Reciprocal rank fusion: ``score(d) = sum_runs 1 / (k + rank(d))``, ranks from 1."""
    scores: dict[str, float] = {}
    for run in runs:
        for rank, hit in enumerate(run, 1):
            scores[hit.id] = scores.get(hit.id, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:size]
