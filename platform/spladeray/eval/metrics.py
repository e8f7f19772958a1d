"""Retrieval metrics through ``ir-measures`` (never re-implemented here)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import ir_measures

DEFAULT_MEASURES = ("nDCG@10", "R@1", "R@10", "R@100", "RR@10")

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


def evaluate_run(run: Run, qrels: Qrels, measures: Iterable[str] = DEFAULT_MEASURES) -> dict:
    """Mean of each measure over the queries of ``qrels`` (queries missing from the run score 0).

    ``run`` is ``{query_id: {doc_id: score}}``; ``qrels`` is ``{query_id: {doc_id: relevance}}``.
    Keys of the result are the measure names as given (``nDCG@10``, ``R@100``, ``RR@10`` ...).
    """
    names = list(measures)
    parsed = [ir_measures.parse_measure(m) for m in names]
    qrels = {q: dict(d) for q, d in qrels.items() if d}
    full_run = {q: dict(run.get(q, {})) for q in qrels}
    # ir-measures skips queries without results; give them an explicit zero instead.
    empty = [q for q, docs in full_run.items() if not docs]
    for q in empty:
        full_run[q] = {"__no_result__": 0.0}
    agg = ir_measures.calc_aggregate(parsed, qrels, full_run)
    return {name: float(agg[m]) for name, m in zip(names, parsed, strict=True)}
