"""Sparse indexes: the ``SparseIndex`` protocol, the embedded backend, and ``open_index``."""

from __future__ import annotations

from spladeray.index.base import (
    BulkResult,
    Failure,
    Hit,
    IndexUnavailableError,
    SparseIndex,
)
from spladeray.index.local import LocalIndex

__all__ = [
    "BulkResult",
    "Failure",
    "Hit",
    "IndexUnavailableError",
    "LocalIndex",
    "SparseIndex",
    "open_index",
]


def open_index(config) -> SparseIndex:
    """The backend an :class:`spladeray.config.IndexConfig` names (embedded by default)."""
    if config.backend == "local":
        return LocalIndex(config.path, search=config.search, seismic=config.seismic)
    if config.backend == "opensearch":
        from spladeray.index.opensearch import OpenSearchIndex

        return OpenSearchIndex.from_config(config.opensearch)
    raise ValueError(f"unknown index backend {config.backend!r}")
