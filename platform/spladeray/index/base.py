"""The ``SparseIndex`` protocol every backend (embedded, OpenSearch) implements.

Vectors are ``{token: weight}`` dicts, as :class:`spladeray.model.SpladeEncoder` returns them.
Writes never drop anything silently: :class:`BulkResult` counts what was indexed and lists every
failure by document id with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class Failure:
    """A document that was not indexed, and why."""

    id: str
    error: str


@dataclass
class BulkResult:
    """The outcome of a bulk write: ``indexed`` documents written, ``failed`` the rest by id."""

    indexed: int = 0
    failed: list[Failure] = field(default_factory=list)

    def merge(self, other: BulkResult) -> BulkResult:
        return BulkResult(self.indexed + other.indexed, self.failed + other.failed)

    def to_json(self) -> dict[str, Any]:
        return {"indexed": self.indexed, "failed": [f.__dict__ for f in self.failed]}


@dataclass
class Hit:
    """One search result; ``fields`` are the stored fields (title, text, ...)."""

    id: str
    score: float
    fields: dict[str, Any] = field(default_factory=dict)


class IndexUnavailableError(RuntimeError):
    """The backend cannot be reached; callers answer 503, never claim success.

    A failed write carries ``result``: what the backend confirmed before failing, with every
    unconfirmed document in ``failed`` (None when nothing was being written).
    """

    def __init__(self, message: str, result: BulkResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class IndexNotFoundError(KeyError):
    """The named index does not exist (callers answer 404)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "index not found"


class AliasesUnsupportedError(NotImplementedError):
    """The backend has no aliases (the embedded index); rollouts need OpenSearch."""


@dataclass
class IndexInfo:
    """One concrete index as :meth:`SparseIndex.list_indices` reports it."""

    name: str
    created: int = 0  # creation time, milliseconds since the epoch
    meta: dict[str, Any] = field(default_factory=dict)  # the spladeray ``_meta`` (model, ...)
    aliases: list[str] = field(default_factory=list)


@runtime_checkable
class SparseIndex(Protocol):
    """Everything a caller may do with an index, on every backend, with no probing.

    Documents: create, add (bulk, by id), search / search_many (sparse dot product),
    text_search (BM25 over the stored title/text), get, ids, count, refresh, delete, close.

    Rollout aliases (:mod:`spladeray.index.rollout`): an alias names exactly one concrete index
    that carries its model in a ``_meta`` record. Backends without aliases (the embedded one)
    answer the read methods with "no alias" (``[]``, ``None``, ``{}``) and raise
    :class:`AliasesUnsupportedError` from the write methods.
    """

    def create(self, name: str) -> None:
        """Create the index if it does not exist (idempotent)."""

    def exists(self, name: str) -> bool:
        """Whether the index (or alias) exists."""

    def add(
        self,
        name: str,
        ids: Sequence[str],
        vectors: Sequence[Mapping[str, float]],
        fields: Sequence[Mapping[str, Any]] | None = None,
    ) -> BulkResult:
        """Write documents; an existing id is overwritten, never duplicated."""

    def search(self, name: str, query: Mapping[str, float], size: int = 10) -> list[Hit]:
        """Top ``size`` documents by sparse dot product, best first."""

    def search_many(
        self, name: str, queries: Sequence[Mapping[str, float]], size: int = 10
    ) -> list[list[Hit]]:
        """:meth:`search` for each query, in order (one matrix product on the embedded index)."""

    def text_search(self, name: str, text: str, size: int = 10) -> list[Hit]:
        """Top ``size`` documents by BM25 over the stored ``title`` and ``text``, best first."""

    def get(self, name: str, doc_id: str) -> dict[str, float] | None:
        """The stored vector of one document, or None."""

    def ids(self, name: str) -> set[str]:
        """Every live document id (empty when the index does not exist)."""

    def existing(self, name: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the index holds (live): a resumed bulk run asks this per batch, so
        no process ever holds the set of every indexed id."""

    def count(self, name: str) -> int:
        """Number of live documents."""

    def refresh(self, name: str) -> None:
        """Make everything written so far searchable."""

    def delete(self, name: str) -> None:
        """Drop the whole index (idempotent)."""

    def close(self) -> None:
        """Release connections (idempotent)."""

    # ---------------------------------------------------------------- rollout aliases
    def alias_targets(self, alias: str) -> list[str]:
        """The concrete indices ``alias`` points to, sorted (empty when it is no alias)."""

    def resolve_alias(self, name: str) -> tuple[str, dict[str, Any]] | None:
        """``(concrete index, its meta)`` when ``name`` is an alias over exactly one index,
        else None (a plain index, a missing name, an alias over several indices)."""

    def update_alias(self, alias: str, add: str, remove: Sequence[str] = ()) -> None:
        """Point ``alias`` at ``add`` and away from ``remove``, atomically (one request)."""

    def index_meta(self, name: str) -> dict[str, Any]:
        """The spladeray meta recorded on an index (``{}`` when none)."""

    def set_index_meta(self, name: str, meta: Mapping[str, Any]) -> None:
        """Record ``meta`` (model hash, model path, ...) on an index."""

    def list_indices(self, pattern: str) -> list[IndexInfo]:
        """Every concrete index whose name matches the wildcard ``pattern`` (``kb-*``)."""


def vector_problem(vector: Any) -> str | None:
    """Why a document vector cannot be stored, or None when it is fine.

    Lucene's FeatureField (and our embedded index) need finite, positive weights under string
    tokens; zeros are dropped upstream, negatives and NaN are errors.
    """
    if not isinstance(vector, Mapping):
        return f"vector must be a mapping of token -> weight, got {type(vector).__name__}"
    for token, weight in vector.items():
        if not isinstance(token, str) or not token:
            return f"token {token!r} is not a non-empty string"
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            return f"weight of token {token!r} is not a number"
        if not math.isfinite(weight) or weight < 0:
            return f"weight of token {token!r} is {weight!r}; must be finite and >= 0"
    return None


def id_problem(doc_id: Any) -> str | None:
    """Why a document id is unusable, or None."""
    if not isinstance(doc_id, str) or not doc_id.strip():
        return f"document id must be a non-empty string, got {doc_id!r}"
    try:
        size = len(doc_id.encode("utf-8"))
    except UnicodeEncodeError:
        return "document id is not valid Unicode (a lone surrogate)"
    if size > 512:
        return "document id is longer than 512 bytes"
    return None
