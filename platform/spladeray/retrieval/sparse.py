"""Exact sparse retrieval with a :class:`~spladeray.model.SpladeEncoder`: CSR dot products.

Documents are encoded to a ``[docs, vocab]`` float32 CSR matrix; a query's score for a document
is ``q . d`` over the vocabulary. Search is the embedded index's exact top-k
(:func:`~spladeray.retrieval.topk.sparse_top_k`) over postings built once per corpus (one CSC
copy, 8 bytes per non-zero): a query touches only its tokens' postings, the document matrix is
never sliced or densified per batch. Documents scoring 0 (no token in common) are not hits;
equal scores come in corpus order.

The matrix can be saved (``sparse.npz``, 8 bytes per non-zero) and loaded by each process that
searches it (negative mining's actors).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import scipy.sparse as sp

from spladeray.retrieval.base import Retriever, RowHits
from spladeray.retrieval.topk import Postings, sparse_top_k

if TYPE_CHECKING:  # torch is imported by whoever built the encoder
    from spladeray.model import SpladeEncoder

MATRIX_FILE = "sparse.npz"


class SparseRetriever(Retriever):
    """Exact search over the SPLADE vectors of one corpus."""

    kind = "sparse"

    def __init__(self, encoder: SpladeEncoder, name: str = "sparse", **options) -> None:
        super().__init__(name, **options)
        self.encoder = encoder
        self._postings: Postings | None = None
        self._postings_of = None

    def encode_documents(self, texts: list[str]) -> sp.csr_matrix:
        return self.encoder.encode_csr(texts, "document", show_progress=self.show_progress)

    def query_matrix(self, queries: Sequence[str]) -> sp.csr_matrix:
        return self.encoder.encode_csr(list(queries), "query")

    def search_rows(self, queries: Sequence[str], k: int) -> list[RowHits]:
        q = sp.csr_matrix(self.query_matrix(queries))
        q.sum_duplicates()
        postings = self.postings
        return [
            sparse_top_k(postings, q.indices[lo:hi], q.data[lo:hi], k)
            for lo, hi in zip(q.indptr[:-1], q.indptr[1:], strict=True)
        ]

    @property
    def postings(self) -> Postings:
        """The inverted index of :attr:`doc_matrix`, built on first search."""
        if self._postings is None or self._postings_of is not self._doc_vectors:
            self._postings = Postings.from_csr(self.doc_matrix)
            self._postings_of = self._doc_vectors
        return self._postings

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
