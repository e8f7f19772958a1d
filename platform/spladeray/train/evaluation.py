"""Evaluation during and around training: a thin call into the one BEIR pipeline.

``evaluate_sparse`` runs :func:`spladeray.eval.runner.evaluate_systems` with the model being
trained as an exact sparse system; ``evaluate_bm25`` runs the bm25s baseline (English stopwords,
Snowball stemming) on the same split. Both return the same keys (nDCG@10, R@100, the average
active dimensions of documents and queries, seconds), so the training report can put the shipped
model, BM25 and the trained model side by side.

It runs on rank 0, in process, over ``train.eval.corpus_limit`` documents: a bounded, linear
cost between steps (a distributed pass would ship the weights being trained to fresh actors at
every evaluation). Why, and what it costs: docs/evaluate.md, "Training-time evaluation".
"""

from __future__ import annotations

import time

MEASURES = ("nDCG@10", "R@100")
DEPTH = 100


def _evaluate(
    system, beir_dir, split: str, corpus_limit: int | None, encoders=None, holdout=None
) -> dict:
    from spladeray.config import EvalDatasetConfig
    from spladeray.eval.runner import evaluate_systems

    start = time.perf_counter()
    dataset = EvalDatasetConfig(
        beir_dir=beir_dir, split=split, corpus_limit=corpus_limit, holdout=holdout
    )
    results = evaluate_systems(
        [dataset], [system], encoders=encoders, measures=MEASURES, depth=DEPTH, latency_queries=0
    )
    result = results.average[system.name]
    return {
        **result.metrics,
        "doc_active_dims": result.sparsity["doc_dims_avg"],
        "query_active_dims": result.sparsity["query_dims_avg"],
        "seconds": time.perf_counter() - start,
    }


def evaluate_sparse(
    encoder, beir_dir, split: str, corpus_limit: int | None = None, holdout=None
) -> dict:
    """``{nDCG@10, R@100, doc_active_dims, query_active_dims, seconds}`` for a SpladeEncoder
    (``holdout``: one part of the split's queries, :class:`spladeray.config.HoldoutConfig`)."""
    from spladeray.config import EvalSparseConfig

    was_training = encoder.training
    try:
        system = EvalSparseConfig(name="sparse")
        encoders = {"sparse": encoder}
        return _evaluate(system, beir_dir, split, corpus_limit, encoders, holdout)
    finally:
        encoder.train(was_training)


def evaluate_bm25(beir_dir, split: str, corpus_limit: int | None = None, holdout=None) -> dict:
    """The same keys for bm25s (English stopwords, Snowball stemming)."""
    from spladeray.config import EvalBM25Config

    return _evaluate(EvalBM25Config(), beir_dir, split, corpus_limit, holdout=holdout)


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
