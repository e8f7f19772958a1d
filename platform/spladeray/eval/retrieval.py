"""Exact sparse retrieval of a BEIR split with a :class:`SpladeEncoder` on the embedded index."""

from __future__ import annotations

import tempfile
from pathlib import Path

from spladeray.data.beir import iter_corpus, load_qrels, load_queries
from spladeray.eval.metrics import DEFAULT_MEASURES, evaluate_run
from spladeray.index.build import index_documents
from spladeray.index.local import LocalIndex
from spladeray.model.encoder import SpladeEncoder


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
    qrels = load_qrels(beir_dir, split)
    queries = load_queries(beir_dir)
    with tempfile.TemporaryDirectory() as tmp:
        index = LocalIndex(index_dir or tmp)
        index.delete("eval")
        index_documents(
            encoder,
            index,
            "eval",
            iter_corpus(beir_dir, corpus_limit),
            show_progress=show_progress,
            allow_random_head=True,  # evaluation measures any model, random or not
        )
        if corpus_limit:
            kept = index.ids("eval")
            qrels = {q: {d: r for d, r in rel.items() if d in kept} for q, rel in qrels.items()}
            qrels = {q: rel for q, rel in qrels.items() if rel}
        qids = [q for q in qrels if q in queries]
        qvecs = encoder.encode_queries([queries[q] for q in qids])
        hits = index.search_many("eval", qvecs, size=depth)
    run = {q: {h.id: h.score for h in hs} for q, hs in zip(qids, hits, strict=True)}
    return run, qrels


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
