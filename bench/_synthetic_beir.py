"""A synthetic BEIR directory for the prepare benchmarks: Zipf words, queries from their positive.

``N`` documents of 60 words drawn from a Zipf law (exponent 1.1) over a vocabulary of pseudo-words
(consonant-vowel syllables, so the stemmer and stopwords leave most of them alone); ``N // 20``
queries of 6 distinct words taken from their positive document (every 20th document); qrels in
``qrels/train.tsv``. Deterministic for a seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DOC_WORDS = 60
QUERY_WORDS = 6
VOCAB = 200_000
ZIPF = 1.1
QUERY_EVERY = 20


def _vocabulary(size: int) -> np.ndarray:
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    syllables = [c + v for c in consonants for v in vowels]  # 70
    words, n = [], len(syllables)
    for i in range(size):
        a, b, c = i % n, (i // n) % n, (i // (n * n)) % n
        words.append(syllables[a] + syllables[b] + syllables[c] + "x")
    return np.asarray(words)


def write_beir(out: str | Path, n_docs: int, seed: int = 0) -> dict:
    """Write ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/train.tsv`` under ``out``."""
    out = Path(out)
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    words = _vocabulary(VOCAB)
    weights = 1.0 / np.arange(1, VOCAB + 1) ** ZIPF
    cdf = np.cumsum(weights / weights.sum())
    queries = []
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as corpus:
        for start in range(0, n_docs, 50_000):
            n = min(50_000, n_docs - start)
            ranks = np.searchsorted(cdf, rng.random((n, DOC_WORDS)))
            ranks = np.minimum(ranks, VOCAB - 1)
            for i in range(n):
                doc = start + i
                text = " ".join(words[ranks[i]])
                corpus.write(json.dumps({"_id": f"d{doc}", "title": "", "text": text}) + "\n")
                if doc % QUERY_EVERY == 0:
                    picked = rng.choice(np.unique(ranks[i]), QUERY_WORDS, replace=False)
                    queries.append((f"q{doc // QUERY_EVERY}", " ".join(words[picked]), f"d{doc}"))
    with open(out / "queries.jsonl", "w", encoding="utf-8") as fh:
        for qid, text, _ in queries:
            fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
    with open(out / "qrels" / "train.tsv", "w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for qid, _, did in queries:
            fh.write(f"{qid}\t{did}\t1\n")
    return {"docs": n_docs, "queries": len(queries), "bytes": (out / "corpus.jsonl").stat().st_size}
