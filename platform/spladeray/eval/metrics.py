"""Retrieval metrics through ``ir-measures`` (never re-implemented here).

A run is ``{query_id: {doc_id: score}}`` and qrels are ``{query_id: {doc_id: relevance}}``, the
shapes ``ir-measures`` takes directly. Runs can be written to and read from TREC run files, so a
result can be re-checked with any other tool.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import ir_measures

DEFAULT_MEASURES = ("nDCG@10", "R@1", "R@10", "R@100", "RR@10")

# How the tables name the measures (ir-measures calls MRR ``RR`` and recall ``R``).
DISPLAY_NAMES = {"RR@10": "MRR@10", "R@1": "Recall@1", "R@10": "Recall@10", "R@100": "Recall@100"}

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


def display_name(measure: str) -> str:
    """``RR@10`` -> ``MRR@10``, ``R@100`` -> ``Recall@100``; others unchanged."""
    return DISPLAY_NAMES.get(measure, measure)


def _prepare(run: Run, qrels: Qrels) -> tuple[dict, dict]:
    qrels = {q: dict(d) for q, d in qrels.items() if d}
    full_run = {q: dict(run.get(q, {})) for q in qrels}
    # ir-measures skips queries without results; give them an explicit zero instead.
    for q, docs in full_run.items():
        if not docs:
            full_run[q] = {"__no_result__": 0.0}
    return full_run, qrels


def evaluate_run(run: Run, qrels: Qrels, measures: Iterable[str] = DEFAULT_MEASURES) -> dict:
    """Mean of each measure over the queries of ``qrels`` (queries missing from the run score 0).

    ``run`` is ``{query_id: {doc_id: score}}``; ``qrels`` is ``{query_id: {doc_id: relevance}}``.
    Keys of the result are the measure names as given (``nDCG@10``, ``R@100``, ``RR@10`` ...).
    """
    names = list(measures)
    parsed = [ir_measures.parse_measure(m) for m in names]
    full_run, qrels = _prepare(run, qrels)
    agg = ir_measures.calc_aggregate(parsed, qrels, full_run)
    return {name: float(agg[m]) for name, m in zip(names, parsed, strict=True)}


def per_query(
    run: Run, qrels: Qrels, measures: Iterable[str] = DEFAULT_MEASURES
) -> dict[str, dict[str, float]]:
    """``{query_id: {measure: value}}`` over the queries of ``qrels`` (same rules as above)."""
    names = list(measures)
    parsed = [ir_measures.parse_measure(m) for m in names]
    by_measure = dict(zip(parsed, names, strict=True))
    full_run, qrels = _prepare(run, qrels)
    out: dict[str, dict[str, float]] = {q: {} for q in qrels}
    for m in ir_measures.iter_calc(parsed, qrels, full_run):
        out[m.query_id][by_measure[m.measure]] = float(m.value)
    return out


def write_trec_run(run: Run, path: str | Path, tag: str = "spladeray") -> Path:
    """Write a TREC run file (``qid Q0 docid rank score tag``), best first per query."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for qid, docs in run.items():
            ranked = sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))
            for rank, (did, score) in enumerate(ranked, 1):
                fh.write(f"{qid} Q0 {did} {rank} {score:.6f} {tag}\n")
    return path


def read_trec_run(path: str | Path) -> dict[str, dict[str, float]]:
    """Read a TREC run file back into ``{query_id: {doc_id: score}}``."""
    run: dict[str, dict[str, float]] = {}
    for sd in ir_measures.read_trec_run(str(path)):
        run.setdefault(sd.query_id, {})[sd.doc_id] = float(sd.score)
    return run
