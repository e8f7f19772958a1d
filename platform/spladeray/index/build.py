"""Encode a stream of documents and write them to any :class:`SparseIndex`, in one process.

The distributed variant (Ray Data actor pool) is :mod:`spladeray.index.bulk`; this one serves
the demo, tests and small corpora. Rows are checked by :func:`spladeray.index.documents.check_row`
(unusable ones are listed in the result's ``failed``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

from tqdm.auto import tqdm

from spladeray.index.base import BulkResult, Failure, SparseIndex
from spladeray.index.documents import check_row
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
    with tqdm(
        total=total, desc=f"index {name}", unit="doc", disable=None if show_progress else True
    ) as bar:  # None: off a terminal
        for batch in _batches(docs, batch_size):
            checked = [check_row(row) for row in batch]
            good = [d for d in checked if not isinstance(d, Failure)]
            result.failed.extend(d for d in checked if isinstance(d, Failure))
            if good:
                vectors = encoder.encode_documents([d.encode_text for d in good])
                ids, fields = [d.id for d in good], [d.fields() for d in good]
                result = result.merge(index.add(name, ids, vectors, fields))
            bar.update(len(batch))
    return result
