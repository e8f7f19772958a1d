"""The embedded index: exact (or Seismic) sparse top-k with no server, persisted to a folder.

Layout: ``<root>/<name>/seg-<time>-<random>/``, immutable columnar segments
(:mod:`spladeray.index.segments`: memory-mapped CSR rows + CSC postings, int32 token columns
and float32 weights, ids and fields in Arrow). Each ``add`` writes one segment under a temporary
name and renames it, so a crash never leaves half a segment and several processes (Serve
replicas, Ray Data actors) can add to one index; readers pick up new segments before every
search. Each row carries the time of its write: of all copies of an id the latest is live, so
re-indexing overwrites and :meth:`LocalIndex.delete_documents` writes tombstones. Deleted and
replaced rows are masks in memory (Lucene's live-docs bitsets), found through each segment's
sorted id hashes; a new segment only flips bits of the older ones' masks, it never rebuilds
their structures.

Segments are merged by size tiers (:mod:`spladeray.index.merge_policy`): a bulk load costs
O(N log N), and no write rewrites the whole index (:meth:`LocalIndex.compact` does, on request).
Merges run in the writing process under a file lock, one at a time per index.

Search is exact by default: each segment answers with :func:`spladeray.retrieval.topk.sparse_top_k`
(only the query's postings, MaxScore-style pruning, scores from the CSR rows), the largest
segment first, and passes its k-th score on as the next segment's lower bound; equal scores
across segments are ordered by id. ``search="seismic"`` asks a Seismic index per segment
(:mod:`spladeray.index.seismic`, built from the segment's arrays on first use) for candidates
and scores them exactly. Searches share no lock beyond a short look at the folder.

Memory: 16 bytes per stored (document, token) weight on disk, memory-mapped (what a search
touches is resident: the postings of the query's tokens, a few rows), plus ~30 bytes per
document (id hash, row, seq, masks) and the ids and fields in Arrow. docs/scale.md has the
measurements.

Text search (:meth:`LocalIndex.text_search`, the lexical leg of hybrid search) is BM25 over the
stored title and text (the project's one BM25, :class:`spladeray.retrieval.BM25Retriever`, with
the stemmer and stopwords of ``text_language``), built on first use and rebuilt whenever the
index changes.

The embedded index has no aliases: its alias reads answer "no alias", its alias writes raise
:class:`~spladeray.index.base.AliasesUnsupportedError` (rollouts need OpenSearch).

Indexes written by spladeray before segment format 2 (``seg-*.parquet`` files) are not read:
re-index them.
"""

from __future__ import annotations

import fcntl
import fnmatch
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from spladeray.index import segments as seg_io
from spladeray.index.base import (
    AliasesUnsupportedError,
    BulkResult,
    Failure,
    Hit,
    IndexInfo,
    IndexNotFoundError,
    id_problem,
    vector_problem,
)
from spladeray.index.merge_policy import TieredMergePolicy
from spladeray.index.segments import Segment
from spladeray.retrieval.topk import sparse_top_k

logger = logging.getLogger(__name__)

_OPEN_RETRIES = 5  # a merge in another process may remove a segment between listing and opening


class _View:
    """One consistent snapshot of an index, never modified: searches read it without a lock."""

    def __init__(self, segments: Sequence[Segment], alive: Sequence[np.ndarray]) -> None:
        self.segments = tuple(segments)
        self.alive = tuple(alive)  # the winning copy of each id (tombstones included)
        self.live = tuple(a & ~s.tombstone for a, s in zip(alive, segments, strict=True))
        self.names = tuple(s.name for s in segments)
        self.count = int(sum(int(m.sum()) for m in self.live))
        self.by_size = sorted(range(len(segments)), key=lambda i: -segments[i].n)
        self.bm25: tuple[Any, np.ndarray, np.ndarray] | None = None


def _winner(a: tuple[int, str], b: tuple[int, str]) -> bool:
    """Whether copy ``a`` (seq, segment name) replaces copy ``b``."""
    return a > b


def _resolve_all(segments: Sequence[Segment]) -> list[np.ndarray]:
    """Alive masks from scratch: of all copies of an id, the latest (seq, segment name) wins.

    One sort of all id hashes (O(N log N)); only ids with several copies are looked at in
    Python, and their id strings are compared, so a hash collision never merges two ids.
    """
    alive = [np.ones(s.n, dtype=bool) for s in segments]
    if len(segments) < 2:
        return alive
    hashes = np.concatenate([s.hash_sorted for s in segments])
    owner = np.repeat(np.arange(len(segments)), [s.n for s in segments])
    rows = np.concatenate([s.hash_rows for s in segments]).astype(np.int64)
    order = np.argsort(hashes, kind="stable")
    sorted_hashes = hashes[order]
    dup = np.flatnonzero(sorted_hashes[1:] == sorted_hashes[:-1])
    if dup.size == 0:
        return alive
    best: dict[str, tuple[tuple[int, str], int, int]] = {}
    for pos in np.unique(np.concatenate([dup, dup + 1])).tolist():
        i = int(order[pos])
        si, row = int(owner[i]), int(rows[i])
        seg = segments[si]
        doc_id, rank = seg.id(row), (int(seg.seq[row]), seg.name)
        prev = best.get(doc_id)
        if prev is None or _winner(rank, prev[0]):
            if prev is not None:
                alive[prev[1]][prev[2]] = False
            best[doc_id] = (rank, si, row)
        else:
            alive[si][row] = False
    return alive


def _resolve_new(
    segments: Sequence[Segment], alive: list[np.ndarray], new: set[int]
) -> list[np.ndarray]:
    """Alive masks after segments ``new`` joined: only their ids are looked up in the others.

    Costs O(new docs x log N) per write; a mask is copied before it changes (copy on write),
    so the previous view stays valid for searches still running on it.
    """
    copied: set[int] = set(new)

    def kill(si: int, row: int) -> None:
        if si not in copied:
            alive[si] = alive[si].copy()
            copied.add(si)
        alive[si][row] = False

    for j in sorted(new):
        t = segments[j]
        for i, s in enumerate(segments):
            if i == j or (i in new and i > j):
                continue
            if s.n <= t.n:
                pos, rows_t = t.rows_of_hashes(s.hash_sorted)
                rows_s = s.hash_rows[pos].astype(np.int64)
            else:
                pos, rows_s = s.rows_of_hashes(t.hash_sorted)
                rows_t = t.hash_rows[pos].astype(np.int64)
            for rs, rt in zip(rows_s.tolist(), rows_t.tolist(), strict=True):
                if s.id(rs) != t.id(rt):
                    continue  # a 64-bit hash collision: two different ids
                if _winner((int(t.seq[rt]), t.name), (int(s.seq[rs]), s.name)):
                    kill(i, rs)
                else:
                    kill(j, rt)
    return alive


class _Store:
    """One index as this process sees it: the current view and the token columns of segments."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.view = _View([], [])
        self.vocab: dict[str, int] = {}  # token -> global column (union of the segments')

    def refresh(self) -> _View:
        """The view of the segments on disk now (the cached one when nothing changed)."""
        for attempt in range(_OPEN_RETRIES):
            names = seg_io.list_segments(self.path)
            if tuple(names) == self.view.names:
                return self.view
            try:
                return self._load(names)
            except FileNotFoundError:
                if attempt == _OPEN_RETRIES - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    def _load(self, names: list[str]) -> _View:
        pairs = zip(self.view.segments, self.view.alive, strict=True)
        old = dict(zip(self.view.names, pairs, strict=True))
        segs, alive, new = [], [], set()
        for i, name in enumerate(names):
            if name in old:
                segs.append(old[name][0])
                alive.append(old[name][1])
            else:
                seg = Segment(self.path / name)
                self._map_tokens(seg)
                segs.append(seg)
                alive.append(np.ones(seg.n, dtype=bool))
                new.add(i)
        if len(new) == len(names):
            alive = _resolve_all(segs)
        else:
            alive = _resolve_new(segs, alive, new)
        self.view = _View(segs, alive)
        return self.view

    def _map_tokens(self, seg: Segment) -> None:
        cols = np.fromiter(
            (self.vocab.setdefault(t, len(self.vocab)) for t in seg.vocab),
            dtype=np.int64,
            count=len(seg.vocab),
        )
        table = np.full(len(self.vocab), -1, dtype=np.int32)
        table[cols] = np.arange(len(seg.vocab), dtype=np.int32)
        seg.local_columns = table  # global column -> this segment's column (-1: absent)

    def query_columns(
        self, queries: Sequence[Mapping[str, float]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each query as (global columns, weights), unknown tokens and weights <= 0 dropped."""
        out = []
        for q in queries:
            pairs = [(self.vocab.get(t, -1), float(w)) for t, w in q.items() if w > 0]
            cols = np.array([c for c, _ in pairs], dtype=np.int64)
            weights = np.array([w for _, w in pairs], dtype=np.float64)
            out.append((cols[cols >= 0], weights[cols >= 0]))
        return out

    def local_columns(self, seg: Segment, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(positions in cols, the segment's columns)`` of the columns this segment has."""
        table = seg.local_columns
        inside = np.flatnonzero(cols < table.size)
        local = table[cols[inside]]
        keep = local >= 0
        return inside[keep], local[keep]


@contextmanager
def _merge_lock(path: Path) -> Iterator[bool]:
    """An exclusive, non-blocking lock on one index's merges (across processes)."""
    with open(path / "merge.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _kth(scores: list[float], k: int) -> float:
    return float(np.partition(np.asarray(scores), len(scores) - k)[len(scores) - k])


class LocalIndex:
    """:class:`~spladeray.index.base.SparseIndex` on local disk. Thread-safe within a process.

    ``search="seismic"`` answers from approximate Seismic indexes (see
    :mod:`spladeray.index.seismic`), one per segment; ``"exact"`` is the default.
    ``text_language`` is the stemmer / stopword language of :meth:`text_search` (None: neither).
    ``merge_policy`` decides when segments merge (:class:`TieredMergePolicy` by default).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        search: str = "exact",
        seismic: dict[str, Any] | None = None,
        text_language: str | None = "english",
        merge_policy: TieredMergePolicy | None = None,
    ) -> None:
        if search not in ("exact", "seismic"):
            raise ValueError(f"search must be 'exact' or 'seismic', got {search!r}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.search_mode = search
        self.seismic_params = dict(seismic or {})
        self.text_language = text_language
        self.merge_policy = merge_policy or TieredMergePolicy()
        self._stores: dict[str, _Store] = {}
        self._lock = threading.Lock()  # guards only the dict of stores

    # -------------------------------------------------------------- helpers
    def _dir(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"invalid index name {name!r}")
        return self.root / name

    def _store(self, name: str) -> _Store:
        if not self.exists(name):
            raise IndexNotFoundError(f"index {name!r} does not exist under {self.root}")
        with self._lock:
            store = self._stores.get(name)
            if store is None:
                path = self._dir(name)
                if next(path.glob("seg-*.parquet"), None) is not None:
                    raise ValueError(
                        f"index {name!r} under {self.root} was written by an older spladeray "
                        "(parquet segments); re-index it (see docs/scale.md)"
                    )
                for stale in seg_io.remove_stale_tmp(path):
                    logger.warning("index %r: removed %s, left by a writer that died", name, stale)
                store = self._stores[name] = _Store(path)
        return store

    def _view(self, name: str) -> tuple[_Store, _View]:
        """The store and its current view; the store's lock is held only while refreshing."""
        store = self._store(name)
        with store.lock:
            return store, store.refresh()

    # -------------------------------------------------------------- protocol
    def create(self, name: str) -> None:
        self._dir(name).mkdir(parents=True, exist_ok=True)

    def exists(self, name: str) -> bool:
        return self._dir(name).is_dir()

    def add(
        self,
        name: str,
        ids: Sequence[str],
        vectors: Sequence[Mapping[str, float]],
        fields: Sequence[Mapping[str, Any]] | None = None,
    ) -> BulkResult:
        if len(ids) != len(vectors) or (fields is not None and len(fields) != len(ids)):
            raise ValueError("ids, vectors and fields must have the same length")
        self.create(name)
        failed: list[Failure] = []
        rows: dict[str, tuple[str, list[str], list[float]]] = {}  # the last copy of an id wins
        for i, doc_id in enumerate(ids):
            problem = id_problem(doc_id) or vector_problem(vectors[i])
            encoded = "{}"
            if problem is None and fields is not None:
                try:
                    encoded = json.dumps(dict(fields[i]), ensure_ascii=False)
                except (TypeError, ValueError) as exc:
                    problem = f"fields are not JSON-serialisable: {exc}"
            if problem is not None:
                failed.append(Failure(str(doc_id), problem))
                continue
            kept = [(t, float(w)) for t, w in vectors[i].items() if w > 0]
            rows.pop(doc_id, None)
            rows[doc_id] = (encoded, [t for t, _ in kept], [w for _, w in kept])
        if rows:
            self._write(name, list(rows), [r[0] for r in rows.values()], rows.values())
        return BulkResult(indexed=len(rows), failed=failed)

    def delete_documents(self, name: str, ids: Sequence[str]) -> BulkResult:
        """Delete documents by id (unknown ids are no error); bad ids are reported by id."""
        self.create(name)
        failed = [Failure(str(d), p) for d in ids if (p := id_problem(d)) is not None]
        bad = {f.id for f in failed}
        keep = list(dict.fromkeys(d for d in ids if str(d) not in bad))
        if keep:
            self._write(name, keep, ["{}"] * len(keep), [("", [], [])] * len(keep), True)
        return BulkResult(indexed=len(keep), failed=failed)

    def _write(self, name, ids, fields, rows, tombstone: bool = False) -> None:
        vocab: dict[str, int] = {}
        indptr, cols, weights = [0], [], []
        for _, tokens, values in rows:
            cols.extend(vocab.setdefault(t, len(vocab)) for t in tokens)
            weights.extend(values)
            indptr.append(len(cols))
        matrix = sp.csr_matrix(
            (np.asarray(weights, np.float32), np.asarray(cols, np.int32), indptr),
            shape=(len(ids), max(len(vocab), 1)),
        )
        seg_io.write(
            self._dir(name),
            ids=ids,
            fields=fields,
            seq=np.full(len(ids), time.time_ns(), dtype=np.int64),
            tombstone=np.full(len(ids), tombstone),
            vocab=list(vocab),
            matrix=matrix,
        )
        self._maybe_merge(name)

    # -------------------------------------------------------------- merges
    def _maybe_merge(self, name: str) -> None:
        """Merge by size tiers until the policy is content (another process may be doing it)."""
        with _merge_lock(self._dir(name)) as mine:
            if not mine:
                return
            while True:
                store, view = self._view(name)
                pick = self.merge_policy.pick([int(a.sum()) for a in view.alive])
                if pick is None:
                    return
                self._merge(store, view, pick)

    def _merge(self, store: _Store, view: _View, pick: Sequence[int]) -> None:
        picked = set(pick)
        keep = []
        for i in pick:
            seg = view.segments[i]
            mask = view.live[i].copy()
            # a tombstone stays while an older copy of its id may sit in a segment left out
            tombs = np.flatnonzero(view.alive[i] & seg.tombstone)
            if tombs.size:
                hashes = seg.row_hashes()[tombs]
                for j, other in enumerate(view.segments):
                    if j not in picked:
                        mask[tombs[other.rows_of_hashes(hashes)[0]]] = True
            keep.append(mask)
        seg_io.merge(store.path, [view.segments[i] for i in pick], keep)
        for i in pick:
            shutil.rmtree(view.segments[i].path, ignore_errors=True)

    def compact(self, name: str) -> None:
        """Merge every segment into one holding only live rows (same search results)."""
        with _merge_lock(self._dir(name)) as mine:
            if not mine:
                return  # another process is merging; its result is as good
            store, view = self._view(name)
            if len(view.segments) > 1 or any(not m.all() for m in view.live):
                seg_io.merge(store.path, view.segments, view.live)
                for seg in view.segments:
                    shutil.rmtree(seg.path, ignore_errors=True)

    def segment_sizes(self, name: str) -> list[int]:
        """Documents per segment (live or not), oldest segment first (merge tests, benches)."""
        return [s.n for s in self._view(name)[1].segments]

    # -------------------------------------------------------------- search
    def search(self, name: str, query: Mapping[str, float], size: int = 10) -> list[Hit]:
        return self.search_many(name, [query], size)[0]

    def search_many(
        self, name: str, queries: Sequence[Mapping[str, float]], size: int = 10
    ) -> list[list[Hit]]:
        """Top ``size`` for each query, exact (or Seismic's, rescored exactly)."""
        if size <= 0:
            raise ValueError("size must be positive")
        store, view = self._view(name)
        queries = store.query_columns(queries)
        if self.search_mode == "seismic":
            found = self._seismic_rows(store, view, queries, size)
        else:
            found = [self._exact_rows(store, view, cols, w, size) for cols, w in queries]
        return [
            [
                Hit(view.segments[si].id(row), score, view.segments[si].fields(row))
                for score, si, row in hits
            ]
            for hits in found
        ]

    def _exact_rows(self, store, view, cols, weights, size) -> list[tuple[float, int, int]]:
        """``(score, segment, row)`` of the top ``size``, best first, ties by id."""
        found: list[tuple[float, int, int]] = []
        theta = 0.0
        for si in view.by_size:
            seg = view.segments[si]
            at, local = store.local_columns(seg, cols)
            rows, scores = sparse_top_k(
                seg.postings, local, weights[at], size, live=view.live[si], theta=theta
            )
            found.extend((float(s), si, int(r)) for s, r in zip(scores, rows, strict=True))
            if len(found) >= size:
                theta = _kth([f[0] for f in found], size)
        return self._best(view, found, size)

    @staticmethod
    def _best(view, found, size):
        found.sort(key=lambda f: -f[0])
        if len(found) > size:  # keep every hit tied with the last one: ties go by id
            last = found[size - 1][0]
            found = [f for f in found if f[0] >= last]
        found.sort(key=lambda f: (-f[0], view.segments[f[1]].id(f[2])))
        return found[:size]

    def _seismic_rows(self, store, view, queries, size) -> list[list[tuple[float, int, int]]]:
        from spladeray.index.seismic import SeismicSearcher

        found: list[list[tuple[float, int, int]]] = [[] for _ in queries]
        for si, seg in enumerate(view.segments):
            live = view.live[si]
            if not live.any():
                continue
            if seg.seismic is None:  # the segment never changes: built once, kept with it
                seg.seismic = SeismicSearcher(seg.postings, self.seismic_params)
            dead = int(seg.n - live.sum())
            local = [store.local_columns(seg, cols) for cols, _ in queries]
            rows = seg.seismic.search_many(
                [(lc, w[at]) for (at, lc), (_, w) in zip(local, queries, strict=True)],
                size + min(dead, 4 * size),
            )
            for qi, cand in enumerate(rows):
                cand = cand[live[cand]]
                if cand.size == 0:
                    continue
                # Seismic picks the candidates; their scores are recomputed exactly, so a hit's
                # score never depends on Seismic's query cut or half-precision storage.
                at, lc = local[qi]
                qdense = np.zeros(seg.postings.n_tokens)
                qdense[lc] = queries[qi][1][at]
                scores = seg.postings.full_scores(cand, qdense).astype(np.float32)
                found[qi].extend(
                    (float(s), si, int(r)) for s, r in zip(scores, cand, strict=True) if s > 0
                )
        return [self._best(view, f, size) for f in found]

    def text_search(self, name: str, text: str, size: int = 10) -> list[Hit]:
        """BM25 over the stored title and text (rebuilt after every change to the index)."""
        from spladeray.retrieval import BM25Retriever

        store, view = self._view(name)
        if view.count == 0 or size <= 0:
            return []
        with store.lock:
            if view.bm25 is None:
                owners, rows, texts = [], [], []
                for si, seg in enumerate(view.segments):
                    live_rows = np.flatnonzero(view.live[si])
                    column = seg.docs.column("fields").take(pa.array(live_rows))
                    for encoded in column.to_pylist():
                        f = json.loads(encoded)
                        texts.append(f"{f.get('title') or ''} {f.get('text') or ''}".strip())
                    owners.append(np.full(live_rows.size, si))
                    rows.append(live_rows)
                bm25 = BM25Retriever.for_language(self.text_language).index(None, texts)
                view.bm25 = (bm25, np.concatenate(owners), np.concatenate(rows))
            bm25, owners, rows = view.bm25
        hits, scores = bm25.search_rows([text], size)[0]
        out = []
        for i, score in zip(hits.tolist(), scores.tolist(), strict=True):
            seg, row = view.segments[owners[i]], int(rows[i])
            out.append(Hit(seg.id(row), float(score), seg.fields(row)))
        return out

    def count(self, name: str) -> int:
        return self._view(name)[1].count

    def ids(self, name: str) -> set[str]:
        """All live document ids (used to resume an indexing run)."""
        if not self.exists(name):
            return set()
        view = self._view(name)[1]
        out: set[str] = set()
        for seg, live in zip(view.segments, view.live, strict=True):
            out.update(seg.docs.column("id").filter(pa.array(live)).to_pylist())
        return out

    def existing(self, name: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are live here: one sorted-hash lookup per segment for the batch."""
        if not ids or not self.exists(name):
            return set()
        view = self._view(name)[1]
        keys = np.array([seg_io.id_hash(i) for i in ids], dtype=np.uint64)
        out: set[str] = set()
        for si, seg in enumerate(view.segments):
            for at, row in zip(*seg.rows_of_hashes(keys), strict=True):
                if view.live[si][row] and seg.id(int(row)) == ids[at]:
                    out.add(ids[at])
        return out

    def refresh(self, name: str) -> None:
        """Nothing to do: every write is a complete segment that the next read picks up."""

    def close(self) -> None:
        """Drop the in-memory views (the folder stays)."""
        with self._lock:
            self._stores.clear()

    def get(self, name: str, doc_id: str) -> dict[str, float] | None:
        """The stored vector of one document, or None."""
        view = self._view(name)[1]
        key = np.array([seg_io.id_hash(doc_id)], dtype=np.uint64)
        for si, seg in enumerate(view.segments):
            for row in seg.rows_of_hashes(key)[1].tolist():
                if view.live[si][row] and seg.id(row) == doc_id:
                    return seg.vector(row)
        return None

    def delete(self, name: str) -> None:
        with self._lock:
            self._stores.pop(name, None)
        shutil.rmtree(self._dir(name), ignore_errors=True)

    # -------------------------------------------------------------- aliases (none here)
    def alias_targets(self, alias: str) -> list[str]:
        return []

    def resolve_alias(self, name: str) -> tuple[str, dict[str, Any]] | None:
        return None

    def update_alias(self, alias: str, add: str, remove: Sequence[str] = ()) -> None:
        raise AliasesUnsupportedError(
            "the embedded index has no aliases; rollouts need index.backend: opensearch"
        )

    def index_meta(self, name: str) -> dict[str, Any]:
        return {}

    def set_index_meta(self, name: str, meta: Mapping[str, Any]) -> None:
        raise AliasesUnsupportedError(
            "the embedded index records no model meta; rollouts need index.backend: opensearch"
        )

    def list_indices(self, pattern: str) -> list[IndexInfo]:
        """The index folders matching ``pattern`` (no meta, no aliases), by name."""
        return [
            IndexInfo(d.name, int(d.stat().st_mtime * 1000))
            for d in sorted(self.root.iterdir())
            if d.is_dir() and fnmatch.fnmatchcase(d.name, pattern)
        ]
