"""A document store on disk: one Arrow IPC file of ``(doc_id, text)``, memory-mapped by readers.

Prepare writes every document once (streamed, deduplicated by id) and the miner actors look up
negative texts here instead of each holding the corpus: the texts stay in the page cache, shared by
every process on a node; each reader keeps only an ``id -> row`` dict (about 100 bytes per doc).
Row order is the order the retrieval indexes use, so a hit's row number is its position here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

SCHEMA = pa.schema([("doc_id", pa.string()), ("text", pa.string())])


class DocStoreWriter:
    """Append ``(id, text)`` batches; a repeated id is not written and is returned to the caller."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._sink = pa.OSFile(str(self.path), "wb")
        self._writer = ipc.new_file(self._sink, SCHEMA)
        self._seen: set[str] = set()

    def add(self, ids: Sequence[str], texts: Sequence[str]) -> list[int]:
        """Write new ids; returns the positions (in this call) of ids already stored."""
        keep, dupes = [], []
        for i, doc_id in enumerate(ids):
            if doc_id in self._seen:
                dupes.append(i)
            else:
                self._seen.add(doc_id)
                keep.append(i)
        if keep:
            batch = pa.record_batch(
                [pa.array([ids[i] for i in keep]), pa.array([texts[i] for i in keep])], SCHEMA
            )
            self._writer.write_batch(batch)
        return dupes

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def close(self) -> None:
        self._writer.close()
        self._sink.close()

    def __enter__(self) -> DocStoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DocStore:
    """Read side: ``texts(ids)``, ``ids_at(rows)``, ``texts_at(rows)``; the file is memory-mapped."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.table = ipc.open_file(pa.memory_map(str(self.path), "r")).read_all()
        self._ids = self.table.column("doc_id")
        self._texts = self.table.column("text")
        self._row: dict[str, int] | None = None

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def row_of(self) -> dict[str, int]:
        if self._row is None:
            self._row = {doc_id: i for i, doc_id in enumerate(self._ids.to_pylist())}
        return self._row

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self.row_of

    def ids_at(self, rows: Iterable[int]) -> list[str]:
        return [self._ids[int(r)].as_py() for r in rows]

    def texts_at(self, rows: Iterable[int]) -> list[str]:
        return [self._texts[int(r)].as_py() for r in rows]

    def texts(self, ids: Iterable[str]) -> list[str]:
        """Texts of known ids (KeyError for an unknown one)."""
        return self.texts_at(self.row_of[i] for i in ids)

    def iter_batches(self, size: int) -> Iterable[pa.Table]:
        for start in range(0, len(self), size):
            yield self.table.slice(start, size)
