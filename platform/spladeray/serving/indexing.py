"""Bulk indexing with Ray Data: read corpus lines, encode in an actor pool, write from the actors.

``ray.data.read_text`` streams ``corpus.jsonl``; each actor of a fixed pool (``index.actors``,
one GPU each when the cluster has GPUs) parses its batch, encodes it with its own
:class:`SpladeEncoder` and bulk-writes it to the backend itself, returning only counts and
failures. With ``resume`` the ids already in the index are skipped (re-indexing an id would
overwrite it, so a resumed run never duplicates; it only saves the encoding). Rows that are not
valid JSON or lack an id/text are counted as rejected, never silently dropped.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np

from spladeray.raycluster import ensure_ray

logger = logging.getLogger(__name__)

MAX_REPORTED = 20


class EncodeAndWrite:
    """Ray Data actor: parse -> encode -> ``index.add`` for one batch of corpus lines."""

    def __init__(self, cfg, skip_ref: list) -> None:
        import ray

        from spladeray.serving.api import open_backend
        from spladeray.serving.encoder import load_servable_encoder

        self.cfg = cfg
        self.encoder = load_servable_encoder(cfg)
        self.index = open_backend(cfg.index, self.encoder.tokenizer)
        self.skip: set[str] = ray.get(skip_ref[0]) if skip_ref else set()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from spladeray.data.beir import doc_text
        from spladeray.index.base import IndexUnavailableError

        ids, texts, fields, rejected, skipped = [], [], [], [], 0
        for line in batch["text"]:
            line = str(line)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                doc_id = row.get("_id") if isinstance(row, dict) else None
            except json.JSONDecodeError as exc:
                rejected.append(f"invalid JSON: {exc.msg}")
                continue
            if doc_id is None or str(doc_id).strip() == "":
                rejected.append("missing _id")
                continue
            doc_id = str(doc_id)
            if doc_id in self.skip:
                skipped += 1
                continue
            title, text = row.get("title") or "", row.get("text") or ""
            if (
                not isinstance(title, str)
                or not isinstance(text, str)
                or not (title or text).strip()
            ):
                rejected.append(f"{doc_id}: missing title / text")
                continue
            ids.append(doc_id)
            texts.append(doc_text(row))
            fields.append({"title": title, "text": text})
        indexed, failures = 0, []
        if ids:
            vectors = self.encoder.encode_documents(texts)
            try:
                result = self.index.add(self.cfg.index.name, ids, vectors, fields)
            except IndexUnavailableError as exc:
                result = getattr(exc, "result", None)
                if result is None:
                    raise
                logger.error("%s", exc)
            indexed = result.indexed
            failures = [[f.id, f.error] for f in result.failed]
        return {
            "seen": np.array([len(batch["text"])]),
            "indexed": np.array([indexed]),
            "skipped": np.array([skipped]),
            "failed": np.array([json.dumps(failures)]),
            "rejected": np.array([json.dumps(rejected)]),
        }


def _count_lines(path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def run_index_job(
    cfg, *, resume: bool | None = None, limit: int | None = None, show_progress: bool = True
) -> dict[str, Any]:
    """Index ``cfg.data``'s corpus into ``cfg.index``; returns the summary it prints."""
    import ray
    from tqdm.auto import tqdm

    from spladeray.serving.api import open_backend

    if cfg.data is None:
        raise ValueError(f"{cfg.source}: indexing needs a data section (a BEIR directory)")
    resume = cfg.index.resume if resume is None else resume
    limit = limit or cfg.data.corpus_limit
    corpus = cfg.data.beir_dir / "corpus.jsonl"
    if not corpus.is_file():
        raise FileNotFoundError(f"{corpus} not found")
    ensure_ray(cfg.ray)
    name = cfg.index.name
    tokenizer = None
    if cfg.index.backend == "opensearch" and cfg.index.opensearch.field_type == "sparse_vector":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    index = open_backend(cfg.index, tokenizer)
    index.create(name)
    skip: set[str] = set()
    if resume:
        ids = getattr(index, "ids", None)
        if ids is None:
            raise ValueError(f"{type(index).__name__} cannot list ids; --resume is unsupported")
        skip = ids(name)
        logger.info("resume: %d documents already in %r are skipped", len(skip), name)
    total = _count_lines(corpus)
    if limit:
        total = min(total, limit)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    ds = ray.data.read_text(str(corpus))
    if limit:
        ds = ds.limit(limit)
    out = ds.map_batches(
        EncodeAndWrite,
        fn_constructor_kwargs={"cfg": cfg, "skip_ref": [ray.put(skip)]},
        batch_size=cfg.index.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.index.actors),
        num_cpus=1,
        num_gpus=gpus,
    )
    summary: dict[str, Any] = {
        "index": name,
        "backend": cfg.index.backend,
        "indexed": 0,
        "skipped": 0,
        "failed": 0,
        "rejected": 0,
        "failures": [],
        "rejects": [],
    }
    start = time.perf_counter()
    with tqdm(total=total, desc=f"index {name}", unit="doc", disable=not show_progress) as bar:
        for row in out.iter_rows():
            failures = json.loads(str(row["failed"]))
            rejects = json.loads(str(row["rejected"]))
            summary["indexed"] += int(row["indexed"])
            summary["skipped"] += int(row["skipped"])
            summary["failed"] += len(failures)
            summary["rejected"] += len(rejects)
            room = MAX_REPORTED - len(summary["failures"])
            summary["failures"].extend(failures[: max(room, 0)])
            summary["rejects"].extend(rejects[: max(MAX_REPORTED - len(summary["rejects"]), 0)])
            bar.update(int(row["seen"]))
    refresh = getattr(index, "refresh", None)
    if refresh is not None:
        refresh(name)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    summary["docs_per_s"] = round(summary["indexed"] / max(summary["seconds"], 1e-9), 1)
    summary["count"] = index.count(name)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    print(
        f"\nindexed {summary['indexed']} into {summary['backend']} index {summary['index']!r} "
        f"in {summary['seconds']}s ({summary['docs_per_s']} docs/s); skipped {summary['skipped']} "
        f"already indexed, failed {summary['failed']}, rejected rows {summary['rejected']}; "
        f"the index now holds {summary['count']} documents"
    )
    for doc_id, error in summary["failures"]:
        print(f"  failed {doc_id}: {error}")
    for reason in summary["rejects"]:
        print(f"  rejected: {reason}")
