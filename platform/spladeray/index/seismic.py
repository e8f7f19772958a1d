"""Approximate top-k for the embedded index with Seismic (``pyseismic-lsr``).

Seismic (Bruch et al., SIGIR 2024) prunes each token's posting list to its heaviest entries,
clusters it into blocks with summary vectors, and skips blocks whose summary cannot beat the
current heap. It answers large-corpus queries in well under a millisecond at a small recall
cost; exact search stays the default (and the reference for evaluation). Seismic only picks the
candidates: :class:`~spladeray.index.local.LocalIndex` recomputes their scores exactly. One
Seismic index is built per segment, from the segment's arrays, when it is first searched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from spladeray.retrieval.topk import Postings

DEFAULT_BUILD = {"n_postings": 3500, "centroid_fraction": 0.1, "summary_energy": 0.4}
DEFAULT_SEARCH = {"query_cut": 20, "heap_factor": 0.8}


class SeismicSearcher:
    """A Seismic index over the rows of one segment, built once from its arrays, searched often.

    Documents are the segment's CSR rows, named by row number; tokens are its column numbers
    (``add_documents_by_id``: no token strings, no per-document Python objects).
    """

    def __init__(self, postings: Postings, params: Mapping[str, Any] | None = None) -> None:
        import seismic

        params = dict(params or {})
        self.search_params = {k: params.pop(k, v) for k, v in DEFAULT_SEARCH.items()}
        build = {**DEFAULT_BUILD, **params}
        self._str = seismic.get_seismic_string()
        dataset = seismic.SeismicDataset()
        self.size = 0
        if postings.n_docs:
            self.size = dataset.add_documents_by_id(
                [str(i) for i in range(postings.n_docs)],
                np.asarray(postings.row_cols, dtype=np.int64),
                np.asarray(postings.row_weights, dtype=np.float32),
                np.asarray(postings.row_ptr, dtype=np.int64),
            )
        self._index = (
            seismic.SeismicIndex.build_from_dataset(dataset, **build) if self.size else None
        )

    def search_many(
        self, queries: Sequence[tuple[np.ndarray, np.ndarray]], size: int
    ) -> list[np.ndarray]:
        """Candidate rows (int64, best first by Seismic's estimate) of ``(columns, weights)``."""
        empty = np.zeros(0, dtype=np.int64)
        if self._index is None:
            return [empty for _ in queries]
        asked = [i for i, (cols, _) in enumerate(queries) if len(cols)]
        if not asked:
            return [empty for _ in queries]
        ids = np.array([f"q{i}" for i in asked], dtype=self._str)
        comps = [np.array([str(c) for c in queries[i][0]], dtype=self._str) for i in asked]
        vals = [np.asarray(queries[i][1], dtype=np.float32) for i in asked]
        results = self._index.batch_search(ids, comps, vals, size, **self.search_params)
        # Results are tagged with the query id; do not rely on their order (threads).
        by_query = {hits[0][0]: hits for hits in results if hits}
        return [
            np.array([int(doc) for _, _, doc in by_query.get(f"q{i}", [])], dtype=np.int64)
            for i in range(len(queries))
        ]
