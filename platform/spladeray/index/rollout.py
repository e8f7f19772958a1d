"""Zero-downtime model rollout on OpenSearch, through an alias.

A new model means every document must be re-encoded, and queries must be encoded by the same
model as the index they hit. So each model gets its own index, named by the model's hash::

    <alias>-<model-hash>          e.g.  scifact-3f9a1c0d2b7e

and readers (the Serve app, ``neural_sparse`` clients, dashboards) only ever use ``<alias>``.
:func:`rollout` builds the new index beside the live one, checks its document count against
the source, then moves the alias in **one** ``POST _aliases`` request (remove old + add new are
applied atomically: a reader sees the old index or the new one, never none, never both). The
previous index is kept (``keep_previous``) so :func:`rollback` is one more atomic swap.

Each versioned index records its model in its meta (``model_hash`` and whatever the caller
adds, e.g. the model path), so a reader can resolve the alias to the concrete index and pick the
matching query encoder (:meth:`SparseIndex.resolve_alias <spladeray.index.base.SparseIndex>`).

Everything here takes a :class:`~spladeray.index.base.SparseIndex` (its alias methods; only the
OpenSearch backend has aliases) and plain callables, so ``jobs/index.py`` (Ray Data bulk
indexing) and tests drive it the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spladeray.index.base import SparseIndex

logger = logging.getLogger(__name__)

_HASH_FILES = (".json", ".safetensors", ".bin", ".pt", ".txt", ".model")


class RolloutError(RuntimeError):
    """A rollout or rollback step refused or failed; the alias was not moved."""


class CountMismatchError(RolloutError):
    """The new index does not hold as many documents as the source."""


# --------------------------------------------------------------------------- naming / hashing
def model_hash_from_encoder(encoder: Any) -> str:
    """SHA-256 over the encoder's weights, settings and IDF table (device / dtype independent
    for float32 models): the same model always maps to the same index name."""
    digest = hashlib.sha256()
    digest.update(json.dumps(encoder.config_dict(), sort_keys=True).encode())
    digest.update(str(encoder.vocab_size).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_hash_from_dir(model_dir: str | Path, settings: Mapping[str, Any] | None = None) -> str:
    """SHA-256 over a saved model directory's files (weights, configs, tokenizer, idf.json) and
    the encoding ``settings`` that change vectors (pooling, lengths, top_k, threshold, ...)."""
    root = Path(model_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"model directory not found: {root}")
    digest = hashlib.sha256()
    digest.update(json.dumps(dict(settings or {}), sort_keys=True, default=str).encode())
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in _HASH_FILES):
        digest.update(path.relative_to(root).as_posix().encode())
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def versioned_name(alias: str, model_hash: str, length: int = 12) -> str:
    """``<alias>-<first length hex digits of the model hash>``."""
    if not re.fullmatch(r"[0-9a-f]{6,64}", model_hash[:length]):
        raise ValueError(f"model hash must be lowercase hex, got {model_hash!r}")
    return f"{alias}-{model_hash[:length]}"


def _version_pattern(alias: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(alias)}-[0-9a-f]{{6,64}}$")


# --------------------------------------------------------------------------- reading state
def is_ours(name: str, alias: str, meta: Mapping[str, Any]) -> bool:
    """Whether ``name`` is a version :func:`rollout` built: its mapping's ``_meta.spladeray``
    records a ``model_hash`` whose prefix is the name's suffix. A name that only looks like one
    (``logs-20251207`` next to an alias ``logs``) is someone else's index."""
    model_hash = meta.get("model_hash")
    if not isinstance(model_hash, str) or not name.startswith(f"{alias}-"):
        return False
    suffix = name[len(alias) + 1 :]
    return bool(re.fullmatch(r"[0-9a-f]{6,64}", suffix)) and model_hash.startswith(suffix)


def list_versions(index: SparseIndex, alias: str) -> list[dict[str, Any]]:
    """Every ``<alias>-<hash>`` index, oldest first: name, creation time, model meta, live, and
    ``ours`` (:func:`is_ours`): only those are ever pruned or rolled back to."""
    pattern = _version_pattern(alias)
    out = [
        {
            "index": info.name,
            "created": info.created,
            "model_hash": info.meta.get("model_hash"),
            "meta": info.meta,
            "live": alias in info.aliases,
            "ours": is_ours(info.name, alias, info.meta),
        }
        for info in index.list_indices(f"{alias}-*")
        if pattern.match(info.name)
    ]
    out.sort(key=lambda v: (v["created"], v["index"]))
    return out


def count_documents(index: SparseIndex, name: str) -> int:
    index.refresh(name)
    return index.count(name)


def verify_count(index: SparseIndex, name: str, expected: int, tolerance: int = 0) -> int:
    """Refresh and count ``name``; :class:`CountMismatchError` when off by more than tolerance."""
    got = count_documents(index, name)
    if abs(got - expected) > tolerance:
        raise CountMismatchError(
            f"{name} holds {got} documents but the source has {expected} "
            f"(tolerance {tolerance}); the alias was NOT moved"
        )
    return got


def swap_alias(index: SparseIndex, alias: str, new_index: str, old_indices: list[str]) -> None:
    """Move the alias in one atomic request, then check where it points."""
    if index.exists(alias) and not index.alias_targets(alias):
        raise RolloutError(
            f"{alias!r} is a concrete index, not an alias. Rename it once (reindex into "
            f"{alias}-<hash> or delete it) so that {alias!r} can become the read alias."
        )
    index.update_alias(alias, new_index, old_indices)
    now = index.alias_targets(alias)
    if now != [new_index]:
        raise RolloutError(f"after the swap {alias!r} points to {now}, expected [{new_index!r}]")


# --------------------------------------------------------------------------- rollout / rollback
@dataclass
class RolloutResult:
    alias: str
    index: str
    previous: list[str]
    expected: int
    indexed: int
    swapped: bool
    deleted: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def rollout(
    index: SparseIndex,
    alias: str,
    model_hash: str,
    *,
    build: Callable[[str], Any],
    expected_count: int | Callable[[], int],
    create: Callable[[str], None] | None = None,
    meta: Mapping[str, Any] | None = None,
    keep_previous: int = 1,
    count_tolerance: int = 0,
    hash_length: int = 12,
    rebuild: bool = False,
) -> RolloutResult:
    """Build ``<alias>-<hash>`` beside the live index, verify its count, swap the alias.

    Args:
        build: writes every source document into the index it is given (e.g. the Ray Data
            indexing pipeline with ``index.name`` overridden). Ids overwrite, so re-running after
            a failure resumes safely.
        expected_count: the number of source documents (or a callable computing it).
        create: creates the (empty) index with the right mapping; without it ``build`` must.
        meta: extra ``_meta`` to record (model path, run name, ...).
        keep_previous: how many older versions to keep for :func:`rollback`; older ones are
            deleted. The index the alias pointed to before is always kept when >= 1.
        rebuild: drop and rebuild the versioned index even if it exists.

    Returns what happened; the alias is moved only after the count check passed.
    """
    new = versioned_name(alias, model_hash, hash_length)
    live = index.alias_targets(alias)
    if new in live and not rebuild:
        expected = expected_count() if callable(expected_count) else int(expected_count)
        got = verify_count(index, new, expected, count_tolerance)
        logger.info("%s already serves %s (%d documents); nothing to do", alias, new, got)
        return RolloutResult(alias, new, [i for i in live if i != new], expected, got, False)
    if new in live and rebuild:
        raise RolloutError(f"{new} is live behind {alias!r}; roll back first, then rebuild it")
    if rebuild and index.exists(new):
        logger.info("dropping %s to rebuild it", new)
        index.delete(new)
    if create is not None:
        create(new)
    logger.info("building %s beside %s", new, live or "(no live index)")
    build(new)
    if not index.exists(new):
        raise RolloutError(f"build() did not create {new}")
    index.set_index_meta(new, {"model_hash": model_hash, **dict(meta or {})})
    expected = expected_count() if callable(expected_count) else int(expected_count)
    got = verify_count(index, new, expected, count_tolerance)
    swap_alias(index, alias, new, live)
    logger.info("alias %s -> %s (%d documents); previous: %s", alias, new, got, live or "none")
    deleted = prune_versions(index, alias, keep_previous)
    return RolloutResult(alias, new, live, expected, got, True, deleted)


def prune_versions(index: SparseIndex, alias: str, keep_previous: int) -> list[str]:
    """Delete versioned indices beyond the ``keep_previous`` newest non-live ones.

    Only indices whose mapping carries our ``_meta`` (:func:`is_ours`) are counted or deleted;
    another index that matches ``<alias>-<hex>`` is left alone, with a log line."""
    versions = []
    for v in list_versions(index, alias):
        if not v["ours"]:
            logger.info("keeping %s: no spladeray _meta.model_hash, not a version", v["index"])
        elif not v["live"]:
            versions.append(v)
    doomed = versions[: max(0, len(versions) - keep_previous)]
    for v in doomed:
        logger.info("deleting old version %s", v["index"])
        index.delete(v["index"])
    return [v["index"] for v in doomed]


@dataclass
class RollbackResult:
    alias: str
    index: str
    previous: list[str]
    documents: int


def rollback(index: SparseIndex, alias: str, to_index: str | None = None) -> RollbackResult:
    """Point ``alias`` back at ``to_index`` (default: the newest kept non-live version).

    The index rolled back from is kept, so rolling forward again is ``rollback(to_index=...)``.
    """
    live = index.alias_targets(alias)
    versions = list_versions(index, alias)
    if to_index is None:
        candidates = [v["index"] for v in versions if v["ours"] and v["index"] not in live]
        if not candidates:
            raise RolloutError(f"no previous version of {alias!r} is kept; nothing to roll back to")
        to_index = candidates[-1]
    elif not any(v["index"] == to_index and v["ours"] for v in versions):
        raise RolloutError(f"{to_index!r} is not a kept version of {alias!r}")
    if live == [to_index]:
        raise RolloutError(f"{alias!r} already points to {to_index}")
    documents = count_documents(index, to_index)
    if documents == 0:
        raise RolloutError(f"{to_index} is empty; refusing to roll back to it")
    swap_alias(index, alias, to_index, live)
    logger.info("rolled %s back: %s -> %s", alias, live, to_index)
    return RollbackResult(alias, to_index, live, documents)


def status(index: SparseIndex, alias: str) -> dict[str, Any]:
    """Where the alias points and every kept version with its document count."""
    versions = list_versions(index, alias)
    for v in versions:
        v["documents"] = index.count(v["index"])
    return {"alias": alias, "live": index.alias_targets(alias), "versions": versions}
