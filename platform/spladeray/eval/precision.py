"""Does reduced precision change retrieval? fp32 vs another precision of the same encoder.

Both precisions encode the same BEIR slice (documents and queries); retrieval is exact
dot-product top-10 over the slice, scored with ir-measures (:mod:`spladeray.eval.metrics`).
Reported: nDCG@10 of each and their difference, the max absolute difference of the document
weights, and per document the overlap of the top-20 tokens (|top20(fp32) & top20(other)| / 20,
or over the active tokens when a document has fewer than 20).

The quality guard (``tests/model/test_precision.py``) and ``bench/encode.py`` use it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from spladeray.data.beir import doc_text, iter_corpus, load_qrels, load_queries
from spladeray.eval.metrics import evaluate_run


@dataclass
class PrecisionReport:
    precision: str
    documents: int
    queries: int
    ndcg_fp32: float
    ndcg_other: float
    ndcg_delta: float
    max_abs_diff: float
    top20_overlap_min: float
    top20_overlap_mean: float

    def to_json(self) -> dict:
        return asdict(self)


def beir_slice(
    beir_dir: str | Path, split: str = "dev", corpus_limit: int | None = 1500
) -> tuple[list[str], list[str], list[str], list[str], dict[str, dict[str, int]]]:
    """(doc ids, doc texts, query ids, query texts, qrels) over the first ``corpus_limit``
    documents, qrels restricted to them (queries with no judged document there are dropped),
    as ``configs/demo.yaml``'s ``data.corpus_limit`` does."""
    docs = list(iter_corpus(beir_dir, corpus_limit))
    ids = [str(d["_id"]) for d in docs]
    present = set(ids)
    qrels = {
        q: {d: r for d, r in rel.items() if d in present}
        for q, rel in load_qrels(beir_dir, split).items()
    }
    qrels = {q: rel for q, rel in qrels.items() if any(r > 0 for r in rel.values())}
    queries = load_queries(beir_dir)
    qids = [q for q in qrels if q in queries]
    return ids, [doc_text(d) for d in docs], qids, [queries[q] for q in qids], qrels


def ndcg_at_10(
    q: sp.csr_matrix, d: sp.csr_matrix, qids: list[str], dids: list[str], qrels
) -> float:
    """nDCG@10 of exact dot-product retrieval of queries ``q`` over documents ``d``."""
    scores = (q @ d.T).toarray()
    run = {}
    for row, qid in enumerate(qids):
        top = np.argsort(-scores[row], kind="stable")[:10]
        run[qid] = {dids[j]: float(scores[row, j]) for j in top if scores[row, j] > 0}
    return evaluate_run(run, qrels, ["nDCG@10"])["nDCG@10"]


def top20_overlap(a: sp.csr_matrix, b: sp.csr_matrix, k: int = 20) -> np.ndarray:
    """Per row, the share of ``a``'s top-``k`` tokens that are in ``b``'s top-``k``."""
    out = np.ones(a.shape[0])
    for r in range(a.shape[0]):
        ra, rb = a.getrow(r), b.getrow(r)
        n = min(k, ra.nnz)
        if n == 0:
            continue
        ta = set(ra.indices[np.argsort(-ra.data, kind="stable")[:n]])
        tb = set(rb.indices[np.argsort(-rb.data, kind="stable")[:n]])
        out[r] = len(ta & tb) / n
    return out


def compare_precision(
    encoder,
    precision: str,
    beir_dir: str | Path,
    *,
    split: str = "dev",
    corpus_limit: int | None = 1500,
) -> PrecisionReport:
    """fp32 vs ``precision`` for ``encoder`` on a BEIR slice; restores ``encoder.precision``."""
    dids, dtexts, qids, qtexts, qrels = beir_slice(beir_dir, split, corpus_limit)
    saved = encoder.precision
    out = {}
    try:
        for name in ("float32", precision):
            encoder.precision = name
            out[name] = (
                encoder.encode_csr(dtexts, "document"),
                encoder.encode_csr(qtexts, "query"),
            )
    finally:
        encoder.precision = saved
    (d32, q32), (dx, qx) = out["float32"], out[precision]
    ref, other = ndcg_at_10(q32, d32, qids, dids, qrels), ndcg_at_10(qx, dx, qids, dids, qrels)
    overlap = top20_overlap(d32, dx)
    return PrecisionReport(
        precision=encoder.precision_plan().name if precision == "auto" else precision,
        documents=len(dids),
        queries=len(qids),
        ndcg_fp32=ref,
        ndcg_other=other,
        ndcg_delta=other - ref,
        max_abs_diff=float(abs(d32 - dx).max()) if d32.nnz or dx.nnz else 0.0,
        top20_overlap_min=float(overlap.min()),
        top20_overlap_mean=float(overlap.mean()),
    )
