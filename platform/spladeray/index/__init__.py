"""Sparse indexes: the ``SparseIndex`` protocol, the embedded and OpenSearch backends, and
:func:`open_index`, the one way to open the index a config names."""

from __future__ import annotations

import os
from typing import Any

from spladeray.index.base import (
    AliasesUnsupportedError,
    BulkResult,
    Failure,
    Hit,
    IndexInfo,
    IndexNotFoundError,
    IndexUnavailableError,
    SparseIndex,
)
from spladeray.index.local import LocalIndex

__all__ = [
    "AliasesUnsupportedError",
    "BulkResult",
    "Failure",
    "Hit",
    "IndexInfo",
    "IndexNotFoundError",
    "IndexUnavailableError",
    "LocalIndex",
    "SparseIndex",
    "open_index",
]


def open_index(index_cfg, *, tokenizer: Any = None) -> SparseIndex:
    """The backend an :class:`spladeray.config.IndexConfig` names (embedded by default).

    ``tokenizer`` is needed only by OpenSearch's ``field_type: sparse_vector``, which keys
    features by token id: a loaded tokenizer (``get_vocab()``), or a model path to load it from.
    Callers may always pass the model path; it is read only when the vocabulary is needed.
    """
    if index_cfg.backend == "local":
        return LocalIndex(
            index_cfg.path,
            search=index_cfg.search,
            seismic=index_cfg.seismic,
            text_language=index_cfg.text_language,
        )
    if index_cfg.backend == "opensearch":
        from spladeray.index.opensearch import OpenSearchIndex

        token_ids = None
        if index_cfg.opensearch.field_type == "sparse_vector":
            token_ids = _vocabulary(tokenizer)
        return OpenSearchIndex.from_config(index_cfg.opensearch, token_ids=token_ids)
    raise ValueError(f"unknown index backend {index_cfg.backend!r}")


def _vocabulary(tokenizer: Any) -> dict[str, int]:
    """``token -> id`` of a tokenizer, or of the tokenizer saved with the model at a path."""
    if tokenizer is None:
        raise ValueError(
            "opensearch.field_type sparse_vector keys features by token id: open_index needs "
            "tokenizer= (a tokenizer or the model path)"
        )
    if isinstance(tokenizer, str | os.PathLike):
        from transformers import AutoTokenizer

        from spladeray.model.loading import resolve_model_dir

        tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(str(tokenizer)))
    return tokenizer.get_vocab()
