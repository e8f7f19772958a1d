"""The lexical leg of hybrid search and reciprocal rank fusion.

OpenSearch answers BM25 itself (``multi_match`` on title and text). The embedded index has no
text index, so a ``bm25s`` index over its stored title/text is built on first use and rebuilt
when the index changes (its segment list), which suits the demo-sized corpora it is meant for.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from spladeray.index.base import Hit


def rrf(runs: Sequence[Sequence[Hit]], k: float = 60.0, size: int = 10) -> list[tuple[str, float]]:
    """Reciprocal rank fusion: ``score(d) = sum_runs 1 / (k + rank(d))``, ranks from 1."""
    scores: dict[str, float] = {}
    for run in runs:
        for rank, hit in enumerate(run, 1):
            scores[hit.id] = scores.get(hit.id, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:size]


class LocalBM25:
    """BM25 over an embedded :class:`~spladeray.index.local.LocalIndex` (cached per version)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    def search(self, index, name: str, text: str, size: int) -> list[Hit]:
        import json

        import bm25s
        import Stemmer

        with self._lock:
            with index._lock:  # the embedded backend's own store (same package family)
                store = index._store(name)
                version = tuple(store.segments)
                rows = sorted(store.row_of.values())
                ids = [store.ids[r] for r in rows]
                fields = [json.loads(store.fields[r]) for r in rows]
            cached = self._cache.get(name)
            if cached is None or cached[0] != version:
                stemmer = Stemmer.Stemmer("english")
                corpus = [f"{f.get('title') or ''} {f.get('text') or ''}".strip() for f in fields]
                tokens = bm25s.tokenize(
                    corpus, stopwords="en", stemmer=stemmer, show_progress=False
                )
                model = bm25s.BM25()
                model.index(tokens, show_progress=False)
                cached = (version, (model, stemmer, dict(tokens.vocab), ids, fields))
                self._cache[name] = cached
            model, stemmer, vocab, ids, fields = cached[1]
        if not ids:
            return []
        words = bm25s.tokenize(
            [text], stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False
        )[0]
        known = [w for w in words if w in vocab]
        if not known:
            return []
        docs, scores = model.retrieve(
            [known], k=min(size, len(ids)), show_progress=False, n_threads=1
        )
        return [
            Hit(ids[int(d)], float(s), fields[int(d)])
            for d, s in zip(docs[0], scores[0], strict=True)
            if s > 0
        ]
