"""Encode a stream of documents and write them to any :class:`SparseIndex`, in one process.

The distributed variant (Ray Data actor pool) is ``jobs/index.py``; this one serves the demo,
tests and small corpora.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

from tqdm.auto import tqdm

from spladeray.data.beir import doc_text
from spladeray.index.base import BulkResult, SparseIndex
from spladeray.model.encoder import SpladeEncoder


def _batches(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    it = iter(rows)
    while batch := list(islice(it, size)):
        yield batch


def index_documents(
    encoder: SpladeEncoder,
    index: SparseIndex,
    name: str,
    docs: Iterable[dict],
    *,
    batch_size: int = 256,
    total: int | None = None,
    show_progress: bool = True,
    allow_random_head: bool = False,
) -> BulkResult:
    """Encode BEIR-style ``{"_id", "title", "text"}`` rows and add them to ``index``.

    Stored fields are ``title`` and ``text``. Returns indexed / failed counts for the whole run.
    """
    encoder.check_servable(allow_random_head)
    index.create(name)
    result = BulkResult()
    with tqdm(total=total, desc=f"index {name}", unit="doc", disable=not show_progress) as bar:
        for batch in _batches(docs, batch_size):
            vectors = encoder.encode_documents([doc_text(d) for d in batch])
            fields = [{"title": d.get("title") or "", "text": d.get("text") or ""} for d in batch]
            result = result.merge(index.add(name, [d["_id"] for d in batch], vectors, fields))
            bar.update(len(batch))
    return result
