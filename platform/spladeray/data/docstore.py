"""A document store on disk: one Arrow IPC file of ``(doc_id, text)``, memory-mapped by readers.

Prepare writes every document once (streamed, deduplicated by id) and the miner actors look up
negative texts here instead of each holding the corpus: the texts stay in the page cache, shared by
every process on a node. Readers address documents by row only (``ids_at(rows)``,
``texts_at(rows)``): no reader builds an ``id -> row`` dict of the corpus. Row order is the order
the retrieval indexes use, so a hit's row number is its position here; the pairs carry the rows
of their positives and given negatives (the writer returns them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

SCHEMA = pa.schema([("doc_id", pa.string()), ("text", pa.string())])


class DocStoreWriter:
    """Append ``(id, text)`` batches; a repeated id is not written and is returned to the caller.

    The writer (in prepare's driver) keeps ``id -> row`` for the ids it wrote, to reject repeated
    ids and to give each pair the rows of its documents: about 100 bytes per document.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._sink = pa.OSFile(str(self.path), "wb")
        self._writer = ipc.new_file(self._sink, SCHEMA)
        self._seen: dict[str, int] = {}

    def add(self, ids: Sequence[str], texts: Sequence[str]) -> list[int]:
        """Write new ids; returns the positions (in this call) of ids already stored."""
        keep, dupes = [], []
        for i, doc_id in enumerate(ids):
            if doc_id in self._seen:
                dupes.append(i)
            else:
                self._seen[doc_id] = len(self._seen)
                keep.append(i)
        if keep:
            batch = pa.record_batch(
                [pa.array([ids[i] for i in keep]), pa.array([texts[i] for i in keep])], SCHEMA
            )
            self._writer.write_batch(batch)
        return dupes

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._seen

    def row(self, doc_id: str) -> int:
        """The row of an id written before (KeyError for an unknown one)."""
        return self._seen[doc_id]

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
    """Read side by row: ``ids_at(rows)``, ``texts_at(rows)``; the file is memory-mapped."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.table = ipc.open_file(pa.memory_map(str(self.path), "r")).read_all()
        self._ids = self.table.column("doc_id")
        self._texts = self.table.column("text")

    def __len__(self) -> int:
        return self.table.num_rows

    def ids_at(self, rows: Iterable[int]) -> list[str]:
        return self._ids.take(pa.array(list(rows), pa.int64())).to_pylist()

    def texts_at(self, rows: Iterable[int]) -> list[str]:
        return self._texts.take(pa.array(list(rows), pa.int64())).to_pylist()

    def iter_batches(self, size: int) -> Iterable[pa.Table]:
        for start in range(0, len(self), size):
            yield self.table.slice(start, size)
