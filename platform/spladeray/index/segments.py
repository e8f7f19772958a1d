"""Immutable columnar segments of the embedded index, and how they are written and merged.

A segment is a folder ``seg-<time ns>-<random>/`` written under a temporary name and renamed
into place, so a reader never sees half of one (Lucene's write-once segments). It holds:

- ``docs.arrow`` (Arrow IPC, memory-mapped): ``id``, ``fields`` (JSON), ``seq`` (the time of the
  write that produced the row: a later copy of an id replaces an earlier one), ``tombstone``
  (the row deletes its id);
- ``vocab.arrow``: the segment's token strings; column ``c`` of the matrices is ``vocab[c]``;
- the CSR rows (``row_ptr`` int64, ``row_cols`` int32, ``row_weights`` float32) and the CSC
  postings (``col_ptr``, ``col_rows`` int32, ``col_weights`` float32, ``col_max``) as ``.npy``
  files, memory-mapped: 16 bytes per stored weight, both halves (as PISA keeps a forward and an
  inverted index: postings for candidates, rows for exact scores, merges and Seismic);
- ``id_hash.npy`` / ``id_order.npy``: each id's 64-bit BLAKE2b hash, sorted, and its row: 12
  bytes per document to find an id's copies in other segments without holding ids in memory.

Merges (:func:`merge`) read whole segments and write one new segment with the surviving rows;
nothing is ever modified in place. Which rows survive is decided by the reader
(:mod:`spladeray.index.local`): deletes are masks in memory, as Lucene's live-docs bitsets.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import scipy.sparse as sp

from spladeray.retrieval.topk import Postings, column_max

PREFIX = "seg-"
FORMAT = 2
_DOCS_SCHEMA = pa.schema(
    [("id", pa.string()), ("fields", pa.string()), ("seq", pa.int64()), ("tombstone", pa.bool_())]
)
_ARRAYS = (
    "row_ptr",
    "row_cols",
    "row_weights",
    "col_ptr",
    "col_rows",
    "col_weights",
    "col_max",
    "id_hash",
    "id_order",
)


def id_hash(doc_id: str) -> int:
    """A stable 64-bit hash of an id (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little")


def _load(path: Path) -> np.ndarray:
    try:  # a plain ndarray view of the map: slicing an np.memmap costs ~10x more per call
        return np.asarray(np.load(path, mmap_mode="r"))
    except ValueError:  # numpy cannot memory-map an empty array
        return np.load(path)


class Segment:
    """One segment folder, opened read-only; arrays are memory-mapped, nothing is per document."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"segment {path} has format {meta.get('format')}, expected {FORMAT}")
        arrays = {a: _load(path / f"{a}.npy") for a in _ARRAYS}
        self.docs = ipc.open_file(pa.memory_map(str(path / "docs.arrow"))).read_all()
        self.vocab = (
            ipc.open_file(pa.memory_map(str(path / "vocab.arrow"))).read_all().column(0)
        ).to_pylist()
        self.n = self.docs.num_rows
        self.seq = self.docs.column("seq").to_numpy()
        self.tombstone = self.docs.column("tombstone").to_numpy(zero_copy_only=False)
        self.hash_sorted: np.ndarray = arrays["id_hash"]
        self.hash_rows: np.ndarray = arrays["id_order"]
        self.postings = Postings(
            self.n,
            len(self.vocab),
            arrays["col_ptr"],
            arrays["col_rows"],
            arrays["col_weights"],
            arrays["col_max"],
            arrays["row_ptr"],
            arrays["row_cols"],
            arrays["row_weights"],
        )
        self.seismic = None  # built on first approximate search (index/seismic.py)
        self.local_columns = np.zeros(0, np.int32)  # set by the reader that opened it

    def id(self, row: int) -> str:
        return self.docs.column("id")[row].as_py()

    def fields(self, row: int) -> dict:
        return json.loads(self.docs.column("fields")[row].as_py())

    def vector(self, row: int) -> dict[str, float]:
        p = self.postings
        lo, hi = int(p.row_ptr[row]), int(p.row_ptr[row + 1])
        return {
            self.vocab[c]: float(w)
            for c, w in zip(p.row_cols[lo:hi].tolist(), p.row_weights[lo:hi].tolist(), strict=True)
        }

    def rows_of_hashes(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(positions in hashes, rows here)`` of every hash this segment also holds."""
        if self.n == 0 or hashes.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        at = np.minimum(np.searchsorted(self.hash_sorted, hashes), self.n - 1)
        found = np.flatnonzero(self.hash_sorted[at] == hashes)
        return found, self.hash_rows[at[found]].astype(np.int64)

    def row_hashes(self) -> np.ndarray:
        out = np.empty(self.n, dtype=np.uint64)
        out[self.hash_rows] = self.hash_sorted
        return out


STALE_TMP_S = 3600.0
"""A ``.tmp-*`` segment directory untouched this long was left by a writer that died mid-write
(a killed process never reaches the cleanup in :func:`write`); a live writer renames its
directory within seconds, so one an hour old is garbage."""


def remove_stale_tmp(index_dir: Path, older_than_s: float = STALE_TMP_S) -> list[str]:
    """Remove the ``.tmp-*`` directories of dead writers; returns their names."""
    cutoff, removed = time.time() - older_than_s, []
    for entry in os.scandir(index_dir):
        if entry.name.startswith(".tmp-") and entry.is_dir():
            try:
                if entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed.append(entry.name)
            except FileNotFoundError:  # its writer just renamed or removed it
                continue
    return removed


def list_segments(index_dir: Path) -> list[str]:
    """Names of the complete segments of an index, oldest first."""
    return sorted(e.name for e in os.scandir(index_dir) if e.is_dir() and e.name.startswith(PREFIX))


def write(
    index_dir: Path,
    *,
    ids: Sequence[str] | pa.ChunkedArray,
    fields: Sequence[str] | pa.ChunkedArray,
    seq: np.ndarray,
    tombstone: np.ndarray,
    vocab: Sequence[str],
    matrix: sp.csr_matrix,
    hashes: np.ndarray | None = None,
) -> str:
    """Write one segment atomically (temporary folder + rename); returns its name.

    ``matrix`` is ``[len(ids), len(vocab)]`` float32 with positive values; ``hashes`` the
    :func:`id_hash` of each id when already known (merges).
    """
    csr = sp.csr_matrix(matrix, dtype=np.float32)
    csr.sum_duplicates()  # also sorts the columns of each row (Seismic wants them ascending)
    csc = csr.tocsc()
    if hashes is None:
        hashes = np.fromiter((id_hash(d) for d in ids), dtype=np.uint64, count=len(ids))
    order = np.argsort(hashes, kind="stable")
    arrays = {
        "row_ptr": csr.indptr.astype(np.int64),
        "row_cols": csr.indices.astype(np.int32),
        "row_weights": csr.data,
        "col_ptr": csc.indptr.astype(np.int64),
        "col_rows": csc.indices.astype(np.int32),
        "col_weights": csc.data,
        "col_max": column_max(csc),
        "id_hash": hashes[order],
        "id_order": order.astype(np.int32),
    }
    name = f"{PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
    tmp = index_dir / f".tmp-{name}"
    tmp.mkdir()
    try:
        for key, value in arrays.items():
            np.save(tmp / f"{key}.npy", value)
        docs = pa.table(
            {
                "id": _strings(ids),
                "fields": _strings(fields),
                "seq": pa.array(seq, pa.int64()),
                "tombstone": pa.array(tombstone, pa.bool_()),
            },
            schema=_DOCS_SCHEMA,
        )
        _write_arrow(tmp / "docs.arrow", docs)
        _write_arrow(tmp / "vocab.arrow", pa.table({"token": pa.array(vocab, pa.string())}))
        meta = {"format": FORMAT, "docs": len(ids), "nnz": int(csr.nnz), "tokens": len(vocab)}
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.rename(tmp, index_dir / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return name


def _strings(values) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values
    return pa.array(values, pa.string())


def _write_arrow(path: Path, table: pa.Table) -> None:
    with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def merge(index_dir: Path, segments: Sequence[Segment], keep: Sequence[np.ndarray]) -> str:
    """One new segment with the rows ``keep[i]`` (bool masks) of ``segments``, in order.

    The vocabulary is the union of the inputs'; rows keep their ``seq``, so which copy of an id
    wins never depends on how segments were merged. The inputs are not touched.
    """
    vocab = sorted(set().union(*(s.vocab for s in segments)))
    column = {t: i for i, t in enumerate(vocab)}
    docs, hashes, blocks = [], [], []
    for seg, mask in zip(segments, keep, strict=True):
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            continue
        p = seg.postings
        remap = np.fromiter((column[t] for t in seg.vocab), dtype=np.int32, count=len(seg.vocab))
        csr = sp.csr_matrix(
            (p.row_weights, p.row_cols, p.row_ptr), shape=(seg.n, max(len(seg.vocab), 1))
        )[rows]
        csr = sp.csr_matrix(
            (csr.data, remap[csr.indices] if csr.nnz else csr.indices, csr.indptr),
            shape=(rows.size, max(len(vocab), 1)),
        )
        blocks.append(csr)
        docs.append(seg.docs.take(pa.array(rows)))
        hashes.append(seg.row_hashes()[rows])
    if not docs:
        table = pa.table({f.name: pa.array([], f.type) for f in _DOCS_SCHEMA}, schema=_DOCS_SCHEMA)
        matrix = sp.csr_matrix((0, max(len(vocab), 1)), dtype=np.float32)
        all_hashes = np.zeros(0, np.uint64)
    else:
        table = pa.concat_tables(docs)
        matrix = sp.vstack(blocks, format="csr")
        all_hashes = np.concatenate(hashes)
    return write(
        index_dir,
        ids=table.column("id"),
        fields=table.column("fields"),
        seq=table.column("seq").to_numpy(),
        tombstone=table.column("tombstone").to_numpy(zero_copy_only=False),
        vocab=vocab,
        matrix=matrix,
        hashes=all_hashes,
    )
