"""One set of retrievers and one fusion module, for every part that retrieves.

Negative mining (:mod:`spladeray.data.negatives`), evaluation (:mod:`spladeray.eval`),
training-time evaluation and the Serve hybrid all use these:

- :class:`BM25Retriever` (bm25s + PyStemmer; save / load memory-mapped),
- :class:`DenseRetriever` over a :class:`DenseModel` (sentence-transformers),
- :class:`SparseRetriever` (a :class:`~spladeray.model.SpladeEncoder`, exact CSR dot product),
- :mod:`spladeray.retrieval.fusion`: ``rrf``, ``minmax``, ``score_fusion``, ``fuse``.

This package depends only on :mod:`spladeray.model` and libraries; importing it does not import
torch, sentence-transformers or bm25s (each retriever imports its library when built).
"""

from spladeray.retrieval.base import Retriever, RowHits, top_k
from spladeray.retrieval.bm25 import BM25Retriever
from spladeray.retrieval.dense import DenseModel, DenseRetriever, default_dense_model
from spladeray.retrieval.fusion import fuse, minmax, rrf, score_fusion
from spladeray.retrieval.sparse import SparseRetriever

__all__ = [
    "BM25Retriever",
    "DenseModel",
    "DenseRetriever",
    "Retriever",
    "RowHits",
    "SparseRetriever",
    "default_dense_model",
    "fuse",
    "minmax",
    "rrf",
    "score_fusion",
    "top_k",
]
