"""Reading the prepared parquet (docs/prepared-data.md) and turning rows into model inputs.

Column and file names come from :mod:`spladeray.data.schema`, the module prepare writes with.

The driver opens the shards as a Ray Dataset; Ray Train splits it into one disjoint stream per
worker (``ray.train.get_dataset_shard``). Each worker iterates its stream with a local shuffle
buffer, and :class:`Collator` tokenises in the batch iterator's prefetch thread, off the hot loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from spladeray.data import schema

logger = logging.getLogger(__name__)


MASK_COLUMNS = ("positive_id", "negative_ids", "query_positive_ids")
"""The id columns that mask in-batch false negatives (``train.mask_in_batch_positives``)."""


def id_key(doc_id: str) -> int:
    """A document id as a signed 64-bit integer (blake2b), equal on every rank and process: the
    in-batch mask compares these, so it works on ids gathered from other DDP ranks as tensors."""
    import hashlib

    return int.from_bytes(
        hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little", signed=True
    )


def open_prepared(data_dir: str | Path, teachers: list[str], mask_ids: bool = False):
    """The prepared rows as a Ray Dataset with only the columns training needs.

    ``data_dir`` is a local path or a URI (``s3://bucket/prepared``), read through
    :mod:`spladeray.storage` and the same pyarrow filesystem in Ray Data's read tasks.

    Rows without a hard negative are skipped (every row must have the same number of
    candidates); how many is logged as a warning.
    """
    import pyarrow.parquet as pq
    import ray.data

    from spladeray import storage

    root = str(data_dir)
    shards = storage.join(root, schema.SHARDS_DIR)
    names = (
        [f for f in storage.list_files(shards) if f.endswith(".parquet")]
        if storage.exists(shards)
        else []
    )
    if not names:
        raise FileNotFoundError(
            f"no prepared training data in {shards}; run jobs/prepare.py first "
            "(train.data_dir must be prepare.output_dir)"
        )
    if not storage.exists(storage.join(root, schema.SUCCESS_FILE)):
        raise FileNotFoundError(
            f"{root}/{schema.SUCCESS_FILE} is missing: the prepare run did not finish"
        )
    fs, shard_path = storage.resolve(shards)
    files = [f"{shard_path}/{name}" for name in names]
    columns = [*schema.TEXT_COLUMNS, *(schema.score_column(t) for t in teachers)]
    available = set(pq.read_schema(files[0], filesystem=fs).names)
    missing = [c for c in columns if c not in available]
    if missing:
        raise ValueError(
            f"{shards}: prepared data lacks column(s) {missing}; enable that teacher in prepare "
            "or change train.losses[].teacher"
        )
    import pyarrow.compute as pc

    without = sum(
        int(pc.sum(pc.equal(pc.list_value_length(t.column("negatives")), 0)).as_py() or 0)
        for t in (pq.read_table(f, columns=["negatives"], filesystem=fs) for f in files)
    )
    if without:  # counted and said, never dropped silently
        logger.warning(
            "%d prepared rows have no hard negative and are skipped by training "
            "(prepare found nothing to mine for them; see %s/%s and %s)",
            without,
            root,
            schema.REJECTS_FILE,
            schema.MANIFEST_FILE,
        )
    if "query_id" in available:  # named in messages about a batch (e.g. a NaN loss)
        columns.append("query_id")
    if mask_ids:
        missing = [c for c in MASK_COLUMNS if c not in available]
        if missing:
            raise ValueError(
                f"{shards}: prepared data lacks column(s) {missing} that "
                "train.mask_in_batch_positives needs; re-run prepare or turn the mask off"
            )
        columns.extend(MASK_COLUMNS)
    ds = ray.data.read_parquet(files, columns=columns, filesystem=fs)
    return ds.filter(lambda row: len(row["negatives"]) > 0)


def _pinned(value):
    """``value`` with every tensor in it (dicts, lists) in pinned host memory."""
    if isinstance(value, torch.Tensor):
        return value.pin_memory()
    if isinstance(value, dict):
        return {k: _pinned(v) for k, v in value.items()}
    return value


def _cycle(values: Any, n: int) -> list:
    values = list(values)
    return [values[i % len(values)] for i in range(n)]


@dataclass
class Collator(NumpyBatchCollateFn):
    """Numpy batch of prepared rows -> tokenised query/document tensors and teacher scores.

    Every row gets exactly ``num_negatives`` negatives (its own, cycled when it has fewer), so
    all ranks hold same-shaped tensors for the cross-rank gather.

    Each of ``query`` / ``document`` also carries what the pooling needs from the mask, taken
    here on the host so the training step never reads it back from the GPU: ``lengths`` (a list
    of ints, unmasked tokens per text) and ``token_index`` (the flat positions of the unmasked
    tokens). ``pin_memory`` pins every tensor (in the batch iterator's prefetch thread), so the
    step's ``non_blocking`` copies to the GPU are asynchronous; Ray Data's own ``pin_memory``
    flag takes only flat tensor batches, and this one is nested.
    """

    tokenizer: Any
    num_negatives: int
    max_query_length: int
    max_document_length: int
    teachers: tuple[str, ...] = ()
    doc_only: bool = False
    pin_memory: bool = False

    def _tok(self, texts: list[str], max_length: int, special: bool = True) -> dict:
        enc = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=max_length,
            add_special_tokens=special,
            return_tensors="pt",
        )
        mask = enc["attention_mask"].bool()
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "lengths": mask.sum(dim=1).tolist(),
            "token_index": mask.flatten().nonzero().squeeze(1),
        }

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        n = self.num_negatives
        queries = [str(q) for q in batch["query"]]
        positives = [str(p) for p in batch["positive"]]
        negatives = [str(t) for row in batch["negatives"] for t in _cycle(row, n)] if n else []
        out: dict[str, Any] = {
            "query": self._tok(queries, self.max_query_length, special=not self.doc_only),
            "document": self._tok(positives + negatives, self.max_document_length),
        }
        if "query_id" in batch:
            out["query_id"] = [str(q) for q in batch["query_id"]]
        if all(c in batch for c in MASK_COLUMNS):
            out.update(self._mask_keys(batch, n))
        for name in self.teachers:
            rows: list = []
            for scores in batch[schema.score_column(name)]:
                scores = np.asarray(scores, dtype=np.float32)
                rows.append([scores[0], *_cycle(scores[1:], n)] if n else [scores[0]])
            out[f"teacher_{name}"] = torch.tensor(np.asarray(rows, dtype=np.float32))
        return _pinned(out) if self.pin_memory else out

    @staticmethod
    def _mask_keys(batch: dict[str, np.ndarray], n: int) -> dict[str, torch.Tensor]:
        """``document_keys`` ``[B(1+n)]``: the :func:`id_key` of every document, in the order of
        ``document`` (positives, then each row's ``n`` negatives); ``query_positive_keys``
        ``[B, P]``: each query's positives (all of its rows), padded with 0 (never a key here:
        a real id's key is 0 with probability 2^-64)."""
        ids = [str(p) for p in batch["positive_id"]]
        ids += [str(d) for row in batch["negative_ids"] for d in _cycle(row, n)] if n else []
        positives = [[id_key(str(d)) for d in row] for row in batch["query_positive_ids"]]
        width = max(1, max(len(row) for row in positives))
        padded = np.zeros((len(positives), width), dtype=np.int64)
        for i, row in enumerate(positives):
            padded[i, : len(row)] = row
        return {
            "document_keys": torch.tensor([id_key(d) for d in ids], dtype=torch.int64),
            "query_positive_keys": torch.from_numpy(padded),
        }
