"""Exact sparse retrieval with a :class:`~spladeray.model.SpladeEncoder`: CSR dot products.

Documents are encoded to a ``[docs, vocab]`` float32 CSR matrix; a query's score for a document
is ``q . d`` over the vocabulary, computed exactly for every document (in chunks, see
:func:`~spladeray.retrieval.base.top_k`). Documents scoring 0 (no token in common) are not hits;
equal scores come in corpus order, as in the embedded index's exact search.

The matrix can be saved (``sparse.npz``, 8 bytes per non-zero) and loaded by each process that
searches it (negative mining's actors).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import scipy.sparse as sp

from spladeray.retrieval.base import Retriever, RowHits, top_k

if TYPE_CHECKING:  # torch is imported by whoever built the encoder
    from spladeray.model import SpladeEncoder

MATRIX_FILE = "sparse.npz"


class SparseRetriever(Retriever):
    """Exact search over the SPLADE vectors of one corpus."""

    kind = "sparse"

    def __init__(self, encoder: SpladeEncoder, name: str = "sparse", **options) -> None:
        super().__init__(name, **options)
        self.encoder = encoder

    def encode_documents(self, texts: list[str]) -> sp.csr_matrix:
        return self.encoder.encode_csr(texts, "document", show_progress=self.show_progress)

    def query_matrix(self, queries: Sequence[str]) -> sp.csr_matrix:
        return self.encoder.encode_csr(list(queries), "query")

    def search_rows(self, queries: Sequence[str], k: int) -> list[RowHits]:
        q = self.query_matrix(queries)
        docs = self.doc_matrix

        def scores(start: int, stop: int):
            return (q @ docs[start:stop].T).toarray()

        return top_k(scores, docs.shape[0], q.shape[0], k, positive_only=True)

    # ------------------------------------------------------------------ on disk
    @staticmethod
    def save_matrix(directory: str | Path, matrix: sp.spmatrix) -> None:
        """Write document vectors (row order = corpus order) as ``sparse.npz``."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        sp.save_npz(Path(directory) / MATRIX_FILE, sp.csr_matrix(matrix))

    @classmethod
    def load(
        cls, directory: str | Path, encoder: SpladeEncoder, *, ids: Sequence[str] | None = None
    ) -> SparseRetriever:
        """A matrix :meth:`save_matrix` wrote; ``search_rows`` without ids.

        The saved matrix may be narrower than the vocabulary (only as wide as its largest token
        id); it is widened to the encoder's vocabulary.
        """
        m = sp.load_npz(Path(directory) / MATRIX_FILE).tocsr()
        retriever = cls(encoder)
        retriever._doc_vectors = sp.csr_matrix(
            (m.data, m.indices, m.indptr), shape=(m.shape[0], encoder.vocab_size)
        )
        retriever.ids = list(ids) if ids is not None else None
        return retriever
