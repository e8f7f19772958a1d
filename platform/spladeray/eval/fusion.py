"""Hybrid retrieval: fuse the runs of several systems into one.

Reciprocal rank fusion (Cormack et al. 2009), ranks starting at 1::

    rrf(d) = sum_s  w_s / (k + rank_s(d))         (documents a run misses contribute 0)

Normalised score fusion: each run's scores are min-max scaled per query to [0, 1]
(a run whose scores are all equal scales to 1), then::

    score(d) = sum_s  w_s * norm_s(d)              (documents a run misses contribute 0)

Weights default to equal (1 for RRF, 1/n for score fusion). Ties are broken by document id so
results never depend on dict order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

Run = Mapping[str, Mapping[str, float]]


def _ranked(docs: Mapping[str, float]) -> list[str]:
    return [d for d, _ in sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))]


def _top(scores: dict[str, float], depth: int | None) -> dict[str, float]:
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return dict(ranked[:depth] if depth else ranked)


def _weights(runs: Sequence[Run], weights: Sequence[float] | None, default: float) -> list[float]:
    if weights is None:
        return [default] * len(runs)
    if len(weights) != len(runs):
        raise ValueError(f"{len(weights)} weights for {len(runs)} runs")
    return [float(w) for w in weights]


def _queries(runs: Sequence[Run]) -> list[str]:
    seen: dict[str, None] = {}
    for run in runs:
        seen.update(dict.fromkeys(run))
    return list(seen)


def rrf(
    runs: Sequence[Run],
    k: float = 60.0,
    weights: Sequence[float] | None = None,
    depth: int | None = None,
) -> dict[str, dict[str, float]]:
    """Reciprocal rank fusion of ``runs``; the top ``depth`` fused documents per query."""
    ws = _weights(runs, weights, 1.0)
    fused: dict[str, dict[str, float]] = {}
    for qid in _queries(runs):
        scores: dict[str, float] = {}
        for run, w in zip(runs, ws, strict=True):
            for rank, did in enumerate(_ranked(run.get(qid, {})), 1):
                scores[did] = scores.get(did, 0.0) + w / (k + rank)
        fused[qid] = _top(scores, depth)
    return fused


def minmax(docs: Mapping[str, float]) -> dict[str, float]:
    """Scale one query's scores to [0, 1]; all-equal scores become 1."""
    if not docs:
        return {}
    lo, hi = min(docs.values()), max(docs.values())
    if hi == lo:
        return dict.fromkeys(docs, 1.0)
    return {d: (s - lo) / (hi - lo) for d, s in docs.items()}


def score_fusion(
    runs: Sequence[Run],
    weights: Sequence[float] | None = None,
    depth: int | None = None,
) -> dict[str, dict[str, float]]:
    """Weighted sum of per-query min-max normalised scores."""
    ws = _weights(runs, weights, 1.0 / max(len(runs), 1))
    fused: dict[str, dict[str, float]] = {}
    for qid in _queries(runs):
        scores: dict[str, float] = {}
        for run, w in zip(runs, ws, strict=True):
            for did, s in minmax(run.get(qid, {})).items():
                scores[did] = scores.get(did, 0.0) + w * s
        fused[qid] = _top(scores, depth)
    return fused


def fuse(
    runs: Sequence[Run],
    method: str = "rrf",
    *,
    k: float = 60.0,
    weights: Sequence[float] | None = None,
    depth: int | None = None,
) -> dict[str, dict[str, float]]:
    """``rrf`` or ``score`` fusion by name."""
    if method == "rrf":
        return rrf(runs, k=k, weights=weights, depth=depth)
    if method == "score":
        return score_fusion(runs, weights=weights, depth=depth)
    raise ValueError(f"unknown fusion method {method!r}; expected 'rrf' or 'score'")
