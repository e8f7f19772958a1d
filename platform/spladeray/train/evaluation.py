"""Evaluation during and around training: exact retrieval on the embedded index, plus sparsity.

``evaluate_sparse`` encodes the corpus once with :class:`spladeray.eval.retrieval.SparseRetriever`
(embedded :class:`LocalIndex`, exact) and returns nDCG@10 and R@100 together with the average
active dimensions of documents and queries; ``evaluate_bm25`` gives the same keys for the bm25s
baseline, so the training report can put the shipped model, BM25 and the trained model side by
side from one run.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

MEASURES = ("nDCG@10", "R@100")


def _load(beir_dir: str | Path, split: str, corpus_limit: int | None):
    from spladeray.data.beir import doc_text, iter_corpus, load_qrels, load_queries
    from spladeray.eval.retrieval import restrict_qrels

    docs = list(iter_corpus(beir_dir, corpus_limit))
    queries = load_queries(beir_dir)
    qrels = restrict_qrels(
        load_qrels(beir_dir, split), queries, {d["_id"] for d in docs} if corpus_limit else None
    )
    qids = list(qrels)
    return (
        [d["_id"] for d in docs],
        [doc_text(d) for d in docs],
        qids,
        [queries[q] for q in qids],
        qrels,
    )


def _mean_nnz(matrix) -> float:
    return float(np.diff(matrix.indptr).mean()) if matrix.shape[0] else 0.0


def _evaluate(retriever, beir_dir, split, corpus_limit) -> dict[str, float]:
    from spladeray.eval.metrics import evaluate_run

    t0 = time.perf_counter()
    ids, texts, qids, qtexts, qrels = _load(beir_dir, split, corpus_limit)
    try:
        retriever.index(ids, texts)
        results = retriever.search(qtexts, k=100)
        out = evaluate_run(dict(zip(qids, results, strict=True)), qrels, MEASURES)
        out["doc_active_dims"] = _mean_nnz(retriever.doc_matrix.tocsr())
        out["query_active_dims"] = _mean_nnz(retriever.query_matrix(qtexts).tocsr())
    finally:
        retriever.close()
    out["seconds"] = time.perf_counter() - t0
    return out


def evaluate_sparse(encoder, beir_dir, split: str, corpus_limit: int | None = None) -> dict:
    """``{nDCG@10, R@100, doc_active_dims, query_active_dims, seconds}`` for a SpladeEncoder."""
    from spladeray.eval.retrieval import SparseRetriever

    was_training = encoder.training
    try:
        return _evaluate(SparseRetriever(encoder), beir_dir, split, corpus_limit)
    finally:
        encoder.train(was_training)


def evaluate_bm25(beir_dir, split: str, corpus_limit: int | None = None) -> dict:
    """The same keys for bm25s (English stopwords, Snowball stemming)."""
    from spladeray.eval.bm25 import BM25Retriever

    return _evaluate(BM25Retriever(), beir_dir, split, corpus_limit)


def comparison_table(metrics: dict) -> str:
    """A markdown table of ``bm25/*``, ``eval_start/*`` and ``eval/*`` metrics found in a report."""
    rows = [("BM25 (bm25s)", "bm25"), ("initial model", "eval_start"), ("trained model", "eval")]
    lines = [
        "| model | nDCG@10 | R@100 | doc active dims | query active dims |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, prefix in rows:
        if f"{prefix}/nDCG@10" not in metrics:
            continue
        lines.append(
            f"| {label} | {metrics[f'{prefix}/nDCG@10']:.4f} | {metrics[f'{prefix}/R@100']:.4f} "
            f"| {metrics[f'{prefix}/doc_active_dims']:.1f} "
            f"| {metrics[f'{prefix}/query_active_dims']:.1f} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""
