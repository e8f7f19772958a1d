"""The embedded index: exact sparse top-k with no server, persisted to a folder.

Layout: ``<root>/<name>/seg-<time>-<uuid>.parquet``, one immutable segment per ``add`` call with
columns ``id``, ``fields`` (JSON), ``tokens`` (list<string>) and ``weights`` (list<float32>).
Segments are written to a temporary name and renamed, so a crash never leaves half a segment,
and several processes (Serve replicas, Ray Data actors) can add to one index: each writes its own
files and readers pick up new segments before every search. A later segment's copy of an id
replaces the earlier one, so re-indexing overwrites instead of duplicating.

Text search (:meth:`LocalIndex.text_search`, the lexical leg of hybrid search) is BM25 over the
stored title and text (the project's one BM25, :class:`spladeray.retrieval.BM25Retriever`, with
the stemmer and stopwords of ``text_language``), built on first use and rebuilt whenever the index
changes.

The embedded index has no aliases: its alias reads answer "no alias", its alias writes raise
:class:`~spladeray.index.base.AliasesUnsupportedError` (rollouts need OpenSearch).

Search is exact: the index is an in-memory CSC matrix ``docs x tokens``; a query touches only its
own token columns, ``score = D[:, q_tokens] @ q_weights``, then ``argpartition`` for the top k.
Memory is about 8 bytes per stored (doc, token) weight plus ids and fields: SciFact's 5k docs
with ~260 weights each is ~11 MB; 10M documents want a server (OpenSearch backend).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

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

_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("fields", pa.string()),
        ("tokens", pa.list_(pa.string())),
        ("weights", pa.list_(pa.float32())),
    ]
)
COMPACT_AFTER_SEGMENTS = 64


class _Store:
    """One index in memory: rows in segment order, the live row per id, a lazily built matrix."""

    def __init__(self) -> None:
        self.segments: list[str] = []
        self.ids: list[str] = []
        self.fields: list[str] = []
        self.row_tokens: list[np.ndarray] = []  # token column ids per row
        self.row_weights: list[np.ndarray] = []
        self.vocab: dict[str, int] = {}
        self.row_of: dict[str, int] = {}
        self.matrix: sp.csc_matrix | None = None
        self.live: np.ndarray | None = None
        self.seismic = None  # SeismicSearcher, built on demand
        self.bm25 = None  # BM25Retriever over the live rows, built on demand
        self.bm25_rows: list[int] = []

    def append(self, table: pa.Table) -> None:
        ids = table.column("id").to_pylist()
        fields = table.column("fields").to_pylist()
        tokens = table.column("tokens").to_pylist()
        weights = table.column("weights")
        for i, doc_id in enumerate(ids):
            cols = np.fromiter(
                (self.vocab.setdefault(t, len(self.vocab)) for t in tokens[i]),
                dtype=np.int64,
                count=len(tokens[i]),
            )
            self.row_of[doc_id] = len(self.ids)
            self.ids.append(doc_id)
            self.fields.append(fields[i])
            self.row_tokens.append(cols)
            self.row_weights.append(weights[i].values.to_numpy(zero_copy_only=False))
        self.matrix = None
        self.seismic = None
        self.bm25 = None

    def live_rows(self) -> list[tuple[str, dict[str, float]]]:
        tokens = list(self.vocab)
        return [
            (
                doc_id,
                dict(
                    zip(
                        (tokens[c] for c in self.row_tokens[r]),
                        self.row_weights[r].tolist(),
                        strict=True,
                    )
                ),
            )
            for doc_id, r in self.row_of.items()
        ]

    def build(self) -> None:
        n = len(self.ids)
        lengths = np.fromiter((len(c) for c in self.row_tokens), dtype=np.int64, count=n)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        cols = np.concatenate(self.row_tokens) if n else np.zeros(0, dtype=np.int64)
        data = np.concatenate(self.row_weights) if n else np.zeros(0, dtype=np.float32)
        csr = sp.csr_matrix(
            (data.astype(np.float32), cols, indptr), shape=(n, max(len(self.vocab), 1))
        )
        csr.sum_duplicates()
        self.matrix = csr.tocsc()
        self.live = np.zeros(n, dtype=bool)
        self.live[list(self.row_of.values())] = True


class LocalIndex:
    """:class:`~spladeray.index.base.SparseIndex` on local disk. Thread-safe within a process.

    ``search="seismic"`` answers from an approximate Seismic index (see
    :mod:`spladeray.index.seismic`) rebuilt lazily after writes; ``"exact"`` is the default.
    ``text_language`` is the stemmer / stopword language of :meth:`text_search` (None: neither).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        search: str = "exact",
        seismic: dict[str, Any] | None = None,
        text_language: str | None = "english",
    ) -> None:
        if search not in ("exact", "seismic"):
            raise ValueError(f"search must be 'exact' or 'seismic', got {search!r}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.search_mode = search
        self.seismic_params = dict(seismic or {})
        self.text_language = text_language
        self._stores: dict[str, _Store] = {}
        self._lock = threading.RLock()

    # -------------------------------------------------------------- helpers
    def _dir(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"invalid index name {name!r}")
        return self.root / name

    def _segment_files(self, name: str) -> list[Path]:
        return sorted(self._dir(name).glob("seg-*.parquet"))

    def _store(self, name: str) -> _Store:
        """The in-memory store, refreshed with segments other processes wrote."""
        if not self.exists(name):
            raise IndexNotFoundError(f"index {name!r} does not exist under {self.root}")
        store = self._stores.get(name)
        files = self._segment_files(name)
        if store is None or not set(store.segments).issubset(f.name for f in files):
            store = _Store()  # first use, or compacted by another process: reload all
            self._stores[name] = store
        for f in files:
            if f.name not in store.segments:
                store.append(pq.read_table(f, schema=_SCHEMA))
                store.segments.append(f.name)
        return store

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
        rows: dict[str, list[Any]] = {"id": [], "fields": [], "tokens": [], "weights": []}
        latest: dict[str, int] = {}
        for i, doc_id in enumerate(ids):
            problem = id_problem(doc_id) or vector_problem(vectors[i])
            if problem is None and fields is not None:
                try:
                    encoded_fields = json.dumps(dict(fields[i]), ensure_ascii=False)
                except (TypeError, ValueError) as exc:
                    problem = f"fields are not JSON-serialisable: {exc}"
            else:
                encoded_fields = "{}"
            if problem is not None:
                failed.append(Failure(str(doc_id), problem))
                continue
            kept = {t: float(w) for t, w in vectors[i].items() if w > 0}
            if doc_id in latest:  # the same id twice in one call: the last copy wins
                rows["id"][latest[doc_id]] = None
            latest[doc_id] = len(rows["id"])
            rows["id"].append(doc_id)
            rows["fields"].append(encoded_fields)
            rows["tokens"].append(list(kept))
            rows["weights"].append(list(kept.values()))
        keep = [i for i, d in enumerate(rows["id"]) if d is not None]
        table = pa.table({k: [v[i] for i in keep] for k, v in rows.items()}, schema=_SCHEMA)
        if table.num_rows:
            with self._lock:
                final = (
                    self._dir(name) / f"seg-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
                )
                tmp = final.with_suffix(".tmp")
                pq.write_table(table, tmp)
                os.replace(tmp, final)
                if len(self._segment_files(name)) > COMPACT_AFTER_SEGMENTS:
                    self.compact(name)
        return BulkResult(indexed=table.num_rows, failed=failed)

    def search(self, name: str, query: Mapping[str, float], size: int = 10) -> list[Hit]:
        return self.search_many(name, [query], size)[0]

    def search_many(
        self, name: str, queries: Sequence[Mapping[str, float]], size: int = 10
    ) -> list[list[Hit]]:
        """Exact top-``size`` for many queries with one sparse matrix product."""
        if size <= 0:
            raise ValueError("size must be positive")
        if self.search_mode == "seismic":
            return self._search_seismic(name, queries, size)
        with self._lock:
            store = self._store(name)
            if store.matrix is None:
                store.build()
            matrix, live = store.matrix, store.live
            indptr, cols, data = [0], [], []
            for q in queries:
                for token, weight in q.items():
                    col = store.vocab.get(token)
                    if col is not None and weight > 0:
                        cols.append(col)
                        data.append(weight)
                indptr.append(len(cols))
            qmat = sp.csr_matrix(
                (np.asarray(data, dtype=np.float32), np.asarray(cols, dtype=np.int64), indptr),
                shape=(len(queries), matrix.shape[1]),
            )
            scores = (matrix @ qmat.T).T.toarray()  # [queries, docs]
            scores[:, ~live] = 0.0
            results = []
            for qi in range(len(queries)):
                row = scores[qi]
                candidates = np.flatnonzero(row > 0)
                if candidates.size > size:
                    part = np.argpartition(-row[candidates], size - 1)[:size]
                    candidates = candidates[part]
                order = candidates[np.lexsort((candidates, -row[candidates]))]
                results.append(
                    [Hit(store.ids[r], float(row[r]), json.loads(store.fields[r])) for r in order]
                )
            return results

    def _search_seismic(
        self, name: str, queries: Sequence[Mapping[str, float]], size: int
    ) -> list[list[Hit]]:
        from spladeray.index.seismic import SeismicSearcher

        with self._lock:
            store = self._store(name)
            if store.seismic is None:
                store.seismic = SeismicSearcher(store.live_rows(), self.seismic_params)
            clean = [{t: float(w) for t, w in q.items() if w > 0} for q in queries]
            results = store.seismic.search_many(clean, size)
            out = []
            for query, hits in zip(clean, results, strict=True):
                # Seismic picks the candidates; their scores are recomputed exactly, so a hit's
                # score never depends on Seismic's query cut or half-precision storage.
                cols = {store.vocab[t]: w for t, w in query.items() if t in store.vocab}
                rescored = []
                for doc_id, _ in hits:
                    row = store.row_of[doc_id]
                    score = sum(
                        cols.get(int(c), 0.0) * float(w)
                        for c, w in zip(store.row_tokens[row], store.row_weights[row], strict=True)
                    )
                    rescored.append(Hit(doc_id, score, json.loads(store.fields[row])))
                out.append(sorted(rescored, key=lambda h: (-h.score, h.id)))
            return out

    def text_search(self, name: str, text: str, size: int = 10) -> list[Hit]:
        """BM25 over the stored title and text (rebuilt after every change to the index)."""
        from spladeray.retrieval import BM25Retriever

        with self._lock:
            store = self._store(name)
            if not store.row_of or size <= 0:
                return []
            if store.bm25 is None:
                rows = sorted(store.row_of.values())
                texts = []
                for r in rows:
                    f = json.loads(store.fields[r])
                    texts.append(f"{f.get('title') or ''} {f.get('text') or ''}".strip())
                store.bm25 = BM25Retriever.for_language(self.text_language).index(None, texts)
                store.bm25_rows = rows
            bm25, rows = store.bm25, store.bm25_rows
            ids, fields = store.ids, store.fields
        hits, scores = bm25.search_rows([text], size)[0]
        return [
            Hit(ids[rows[i]], float(score), json.loads(fields[rows[i]]))
            for i, score in zip(hits.tolist(), scores.tolist(), strict=True)
        ]

    def count(self, name: str) -> int:
        with self._lock:
            return len(self._store(name).row_of)

    def ids(self, name: str) -> set[str]:
        """All live document ids (used to resume an indexing run)."""
        if not self.exists(name):
            return set()
        with self._lock:
            return set(self._store(name).row_of)

    def refresh(self, name: str) -> None:
        """Nothing to do: every write is a complete segment that the next read picks up."""

    def close(self) -> None:
        """Drop the in-memory copies (the folder stays)."""
        with self._lock:
            self._stores.clear()

    def get(self, name: str, doc_id: str) -> dict[str, float] | None:
        """The stored vector of one document, or None."""
        with self._lock:
            store = self._store(name)
            row = store.row_of.get(doc_id)
            if row is None:
                return None
            inverse = {v: k for k, v in store.vocab.items()}
            return {
                inverse[int(c)]: float(w)
                for c, w in zip(store.row_tokens[row], store.row_weights[row], strict=True)
            }

    def delete(self, name: str) -> None:
        with self._lock:
            self._stores.pop(name, None)
            shutil.rmtree(self._dir(name), ignore_errors=True)

    def compact(self, name: str) -> None:
        """Rewrite all segments as one holding only live rows (same search results)."""
        with self._lock:
            files = self._segment_files(name)
            table = pa.concat_tables([pq.read_table(f, schema=_SCHEMA) for f in files])
            ids = table.column("id").to_pylist()
            last = {d: i for i, d in enumerate(ids)}
            table = table.take(sorted(last.values()))
            final = self._dir(name) / f"seg-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
            tmp = final.with_suffix(".tmp")
            pq.write_table(table, tmp)
            os.replace(tmp, final)
            for f in files:
                f.unlink(missing_ok=True)
            self._stores.pop(name, None)

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
