"""One set of retrievers and one fusion module, for every part that retrieves.

Negative mining (:mod:`spladeray.data.negatives`), evaluation (:mod:`spladeray.eval`),
training-time evaluation and the Serve hybrid all use these:

- :class:`BM25Retriever` (bm25s + PyStemmer; save / load memory-mapped),
- :class:`DenseRetriever` over a :class:`DenseModel` (sentence-transformers),
- :class:`SparseRetriever` (a :class:`~spladeray.model.SpladeEncoder`, exact CSR dot product),
- :mod:`spladeray.retrieval.fusion`: ``rrf``, ``minmax``, ``score_fusion``, ``fuse``.

This package depends only on :mod:`spladeray.model` and libraries. Names are imported lazily,
so ``from spladeray.retrieval import rrf`` does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Retriever": "spladeray.retrieval.base",
    "top_k": "spladeray.retrieval.base",
    "BM25Retriever": "spladeray.retrieval.bm25",
    "DenseModel": "spladeray.retrieval.dense",
    "DenseRetriever": "spladeray.retrieval.dense",
    "default_dense_model": "spladeray.retrieval.dense",
    "SparseRetriever": "spladeray.retrieval.sparse",
    "fuse": "spladeray.retrieval.fusion",
    "minmax": "spladeray.retrieval.fusion",
    "rrf": "spladeray.retrieval.fusion",
    "score_fusion": "spladeray.retrieval.fusion",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'spladeray.retrieval' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
