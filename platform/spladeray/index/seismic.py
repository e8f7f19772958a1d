"""Approximate top-k for the embedded index with Seismic (``pyseismic-lsr``).

Seismic (Bruch et al., SIGIR 2024) prunes each token's posting list to its heaviest entries,
clusters it into blocks with summary vectors, and skips blocks whose summary cannot beat the
current heap. It answers large-corpus queries in well under a millisecond at a small recall
cost; exact search stays the default (and the reference for evaluation). Seismic only picks the
candidates: :class:`~spladeray.index.local.LocalIndex` recomputes their scores exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_BUILD = {"n_postings": 3500, "centroid_fraction": 0.1, "summary_energy": 0.4}
DEFAULT_SEARCH = {"query_cut": 20, "heap_factor": 0.8}


class SeismicSearcher:
    """A Seismic index over ``(doc_id, {token: weight})`` rows, built once, searched many times."""

    def __init__(
        self,
        rows: Sequence[tuple[str, Mapping[str, float]]],
        params: Mapping[str, Any] | None = None,
    ) -> None:
        import seismic

        params = dict(params or {})
        self.search_params = {k: params.pop(k, v) for k, v in DEFAULT_SEARCH.items()}
        build = {**DEFAULT_BUILD, **params}
        self._str = seismic.get_seismic_string()
        dataset = seismic.SeismicDataset()
        for doc_id, vector in rows:
            if vector:
                tokens = np.array(list(vector), dtype=self._str)
                dataset.add_document(doc_id, tokens, np.fromiter(vector.values(), np.float32))
        self.size = dataset.len
        self._index = (
            seismic.SeismicIndex.build_from_dataset(dataset, **build) if self.size else None
        )

    def search_many(
        self, queries: Sequence[Mapping[str, float]], size: int
    ) -> list[list[tuple[str, float]]]:
        """``[(doc_id, score), ...]`` best first, for each query."""
        if self._index is None:
            return [[] for _ in queries]
        ids = np.array([f"q{i}" for i in range(len(queries))], dtype=self._str)
        comps = [np.array(list(q), dtype=self._str) for q in queries]
        vals = [np.fromiter(q.values(), np.float32, count=len(q)) for q in queries]
        results = self._index.batch_search(ids, comps, vals, size, **self.search_params)
        # Results are tagged with the query id; do not rely on their order (threads).
        by_query = {hits[0][0]: hits for hits in results if hits}
        return [
            [(doc, float(score)) for _, score, doc in by_query.get(f"q{i}", [])]
            for i in range(len(queries))
        ]
