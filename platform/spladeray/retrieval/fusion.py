"""Fusing the rankings of several systems: reciprocal rank fusion and min-max score fusion.

One query's ranking from one system is either a ``{doc_id: score}`` mapping (ranked by score,
higher first, equal scores by id) or a sequence of doc ids, best first. A run is
``{query_id: {doc_id: score}}``.

Reciprocal rank fusion (Cormack et al. 2009), ranks starting at 1::

    rrf(d) = sum_s  w_s / (k + rank_s(d))         (documents a ranking misses contribute 0)

Score fusion: each ranking's scores are min-max scaled to [0, 1], then::

    minmax(s) = (s - min) / (max - min)           (1 for every score when max == min)
    score(d)  = sum_s  w_s * minmax_s(d)          (documents a ranking misses contribute 0)

All-equal scores scale to 1, as OpenSearch's ``min_max`` normalisation does for hybrid search:
a ranking with one hit (or a tie) says "these are my best", not "these are my worst".
Weights default to equal (1 for RRF, 1/n for score fusion). Results are ordered by fused score,
ties by document id, so they never depend on dict order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

Ranking = Mapping[str, float] | Sequence[str]
Run = Mapping[str, Mapping[str, float]]


def ranked_ids(ranking: Ranking) -> list[str]:
    """The doc ids of a ranking, best first (a mapping is sorted by score, ties by id)."""
    if isinstance(ranking, Mapping):
        return [d for d, _ in sorted(ranking.items(), key=lambda kv: (-kv[1], kv[0]))]
    return list(ranking)


def _top(scores: Mapping[str, float], depth: int | None) -> dict[str, float]:
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return dict(ranked[:depth] if depth else ranked)


def _weights(n: int, weights: Sequence[float] | None, default: float) -> list[float]:
    if weights is None:
        return [default] * n
    if len(weights) != n:
        raise ValueError(f"{len(weights)} weights for {n} rankings")
    return [float(w) for w in weights]


def rrf(
    rankings: Sequence[Ranking],
    k: float = 60.0,
    weights: Sequence[float] | None = None,
    depth: int | None = None,
) -> dict[str, float]:
    """Reciprocal rank fusion of one query's rankings: ``{doc_id: fused}``, best first.

    Each ranking is a ``{doc_id: score}`` mapping or a list of ids best first; ``depth`` keeps
    the top fused documents. ``list(rrf(...).items())`` is the ``(id, score)`` list of a hybrid
    search response.
    """
    fused: dict[str, float] = {}
    for ranking, w in zip(rankings, _weights(len(rankings), weights, 1.0), strict=True):
        for rank, doc_id in enumerate(ranked_ids(ranking), 1):
            fused[doc_id] = fused.get(doc_id, 0.0) + w / (k + rank)
    return _top(fused, depth)


def minmax(scores):
    """Min-max scale to [0, 1]; all-equal scores become 1 (see the module docstring).

    A ``{doc_id: score}`` mapping gives a dict; a sequence or array gives a float64 array.
    """
    if isinstance(scores, Mapping):
        return dict(zip(scores, minmax(list(scores.values())).tolist(), strict=True))
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return s
    span = s.max() - s.min()
    return (s - s.min()) / span if span > 0 else np.ones_like(s)


def score_fusion(
    rankings: Sequence[Mapping[str, float]],
    weights: Sequence[float] | None = None,
    depth: int | None = None,
) -> dict[str, float]:
    """Weighted sum of one query's min-max scaled ``{doc_id: score}`` rankings, best first."""
    fused: dict[str, float] = {}
    n = len(rankings)
    for ranking, w in zip(rankings, _weights(n, weights, 1.0 / max(n, 1)), strict=True):
        for doc_id, s in minmax(ranking).items():
            fused[doc_id] = fused.get(doc_id, 0.0) + w * s
    return _top(fused, depth)


def fuse(
    runs: Sequence[Run],
    method: str = "rrf",
    *,
    k: float = 60.0,
    weights: Sequence[float] | None = None,
    depth: int | None = None,
) -> dict[str, dict[str, float]]:
    """Fuse whole runs query by query with ``rrf`` or ``score`` fusion.

    A query any run answers is in the result; a run that misses it contributes nothing.
    """
    if method not in ("rrf", "score"):
        raise ValueError(f"unknown fusion method {method!r}; expected 'rrf' or 'score'")
    _weights(len(runs), weights, 1.0)  # fail on a wrong weight count even with no queries
    queries = list(dict.fromkeys(q for run in runs for q in run))
    fused = {}
    for qid in queries:
        rankings = [run.get(qid, {}) for run in runs]
        if method == "rrf":
            fused[qid] = rrf(rankings, k=k, weights=weights, depth=depth)
        else:
            fused[qid] = score_fusion(rankings, weights=weights, depth=depth)
    return fused
