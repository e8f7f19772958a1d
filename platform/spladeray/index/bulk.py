"""Bulk indexing with Ray Data: read corpus lines, encode in an actor pool, write from the actors.

:func:`spladeray.data.readers.read_text_lines` streams ``corpus.jsonl`` in byte ranges (a local
path or a URI such as ``s3://bucket/beir/scifact``, each range read by whichever node runs its
task; a line that is not UTF-8 is a reject, not a crash; progress is shown in bytes of the file,
with no pre-count of its lines); each actor of a fixed pool (``index.actors``,
one GPU each when the cluster has GPUs) parses its batch, checks each row
(:func:`spladeray.index.documents.check_row`), encodes it with its own :class:`SpladeEncoder`
and bulk-writes it to the backend itself, returning only counts and failures. With ``resume``
each actor asks the backend which of its batch's ids it already holds
(:meth:`~spladeray.index.base.SparseIndex.existing`: ``_mget`` on OpenSearch, a hash lookup on
the embedded index) and skips them before encoding: no process holds the set of every indexed
id (re-indexing an id would overwrite it, so a resumed run never duplicates; it only saves the
encoding). Rows that are not valid JSON or are not usable
documents are counted as rejected, never silently dropped.

**The backend going away stops the job.** When an actor's bulk write finds the backend
unreachable (:class:`~spladeray.index.base.IndexUnavailableError`: connection refused or dropped,
5xx after the client's retries), the job stops with :class:`IndexingStopped`: its message says
what happened and how many documents were confirmed, and its summary counts only documents the
backend confirmed -- never one that was merely sent. ``--resume`` then asks the backend which ids
of each batch it holds (the truth, not a progress file that could disagree with it) and skips
them.

:func:`run_index` is the stage (``jobs/index.py``); it returns an :class:`IndexSummary`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from spladeray import storage
from spladeray.data.readers import read_text_lines
from spladeray.raycluster import check_capacity, cluster_gpus, ensure_ray

logger = logging.getLogger(__name__)

MAX_REPORTED = 20
"""Failures and rejects listed in a summary (all are counted)."""


@dataclass
class IndexSummary:
    """What a bulk indexing run did."""

    index: str
    backend: str
    indexed: int = 0  # documents written
    skipped: int = 0  # already in the index (resume)
    failed: int = 0  # refused by the index (reason per id in ``failures``)
    rejected: int = 0  # rows that are no usable document (reasons in ``rejects``)
    failures: list[list[str]] = field(default_factory=list)  # [id, error], first MAX_REPORTED
    rejects: list[str] = field(default_factory=list)  # first MAX_REPORTED reasons
    seconds: float = 0.0
    docs_per_s: float = 0.0
    count: int = 0  # documents the index holds afterwards

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def report(self) -> str:
        """A few human-readable lines: the totals, then each listed failure and reject."""
        lines = [
            f"indexed {self.indexed} into {self.backend} index {self.index!r} in {self.seconds}s "
            f"({self.docs_per_s} docs/s); skipped {self.skipped} already indexed, failed "
            f"{self.failed}, rejected rows {self.rejected}; the index now holds {self.count} "
            "documents"
        ]
        lines += [f"  failed {doc_id}: {error}" for doc_id, error in self.failures]
        lines += [f"  rejected: {reason}" for reason in self.rejects]
        return "\n".join(lines)


class IndexingStopped(RuntimeError):
    """The job stopped before the end (the backend became unavailable); ``summary`` holds what
    was confirmed up to then."""

    def __init__(self, message: str, summary: IndexSummary) -> None:
        super().__init__(message)
        self.summary = summary


class EncodeAndWrite:
    """Ray Data actor: parse -> check -> encode -> ``index.add`` for one batch of corpus lines."""

    def __init__(self, cfg, resume: bool) -> None:
        from spladeray.index import open_index
        from spladeray.model import load_encoder_from_config
        from spladeray.raycluster import resolve_device

        self.cfg = cfg
        device = str(resolve_device(cfg.model.device))  # cuda only when this actor holds a GPU
        self.encoder = load_encoder_from_config(cfg.model.model_copy(update={"device": device}))
        self.encoder.check_servable(cfg.model.allow_random_head)
        self.index = open_index(cfg.index, tokenizer=self.encoder.tokenizer)
        self.resume = resume

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from spladeray.index.base import Failure, IndexUnavailableError
        from spladeray.index.documents import check_row

        docs, rejected, skipped = [], [], 0
        problems = batch.get("problem", [""] * len(batch["text"]))
        for line, undecodable in zip(batch["text"], problems, strict=True):
            if undecodable:  # not UTF-8 (see read_text_lines)
                rejected.append(str(undecodable))
                continue
            line = str(line)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                rejected.append(f"invalid JSON: {exc.msg}")
                continue
            doc = check_row(row)
            if isinstance(doc, Failure):
                rejected.append(f"{doc.id}: {doc.error}" if doc.id.strip() else doc.error)
            else:
                docs.append(doc)
        if self.resume and docs:  # asked of the backend per batch: the truth, bounded memory
            held = self.index.existing(self.cfg.index.name, [d.id for d in docs])
            skipped = sum(d.id in held for d in docs)
            docs = [d for d in docs if d.id not in held]
        indexed, failures = 0, []
        if docs:
            vectors = self.encoder.encode_documents([d.encode_text for d in docs])
            ids, fields = [d.id for d in docs], [d.fields() for d in docs]
            try:
                result = self.index.add(self.cfg.index.name, ids, vectors, fields)
            except IndexUnavailableError as exc:  # the driver stops the job (see run_index)
                confirmed = exc.result.indexed if exc.result is not None else 0
                stopped = f"{exc} [{len(ids) - confirmed} documents of this batch unconfirmed]"
                return self._row(batch, confirmed, skipped, [], rejected, stopped)
            indexed = result.indexed
            failures = [[f.id, f.error] for f in result.failed]
        return self._row(batch, indexed, skipped, failures, rejected)

    @staticmethod
    def _row(batch, indexed, skipped, failures, rejected, stopped="") -> dict[str, np.ndarray]:
        return {
            "seen": np.array([len(batch["text"])]),
            # the lines' bytes in the file (UTF-8 + newline), for the progress bar
            "bytes": np.array([sum(len(str(t).encode("utf-8")) + 1 for t in batch["text"])]),
            "indexed": np.array([indexed]),
            "skipped": np.array([skipped]),
            "failed": np.array([json.dumps(failures)]),
            "rejected": np.array([json.dumps(rejected)]),
            "stopped": np.array([stopped]),  # why the backend could not be written, or ""
        }


def run_index(
    cfg, *, resume: bool | None = None, limit: int | None = None, show_progress: bool = True
) -> IndexSummary:
    """Index ``cfg.data``'s corpus into ``cfg.index`` with a Ray Data actor pool."""
    import ray
    from tqdm.auto import tqdm

    from spladeray.index import open_index

    if cfg.data is None:
        raise ValueError(f"{cfg.source}: indexing needs a data section (a BEIR directory)")
    resume = cfg.index.resume if resume is None else resume
    limit = limit or cfg.data.corpus_limit
    corpus = storage.join(cfg.data.beir_dir, "corpus.jsonl")
    if storage.is_remote(corpus):  # a bad bucket, prefix or credentials: named before any work
        storage.preflight(read=[corpus])
    if not storage.is_file(corpus):
        raise FileNotFoundError(f"{corpus} not found")
    ensure_ray(cfg.ray)
    gpus_per_actor = 1 if cluster_gpus() > 0 else 0
    actors = cfg.index.actors
    check_capacity(
        f"the indexing job ({actors} encoder actors)",
        cpus=actors,
        gpus=actors * gpus_per_actor,
        hint="lower index.actors",
    )
    name = cfg.index.name
    index = open_index(cfg.index, tokenizer=cfg.model.path)
    index.create(name)
    if resume:
        logger.info(
            "resume: %d documents are already in %r; each batch skips the ids the index holds",
            index.count(name),
            name,
        )
    fs, path = storage.resolve(corpus)
    total = None if limit else fs.get_file_info(path).size  # progress in bytes: no pre-count
    ds = read_text_lines(corpus)  # a line that is not UTF-8 is a reject, not a crash
    if limit:
        ds = ds.limit(limit)
    out = ds.map_batches(
        EncodeAndWrite,
        fn_constructor_kwargs={"cfg": cfg, "resume": bool(resume)},
        batch_size=cfg.index.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1,
        num_gpus=gpus_per_actor,
    )
    summary = IndexSummary(index=name, backend=cfg.index.backend)
    start = time.perf_counter()
    progress = {"unit": "B", "unit_scale": True, "disable": not show_progress}
    with tqdm(total=total, desc=f"index {name}", **progress) as bar:
        for row in out.iter_rows():
            failures = json.loads(str(row["failed"]))
            rejects = json.loads(str(row["rejected"]))
            summary.indexed += int(row["indexed"])
            summary.skipped += int(row["skipped"])
            summary.failed += len(failures)
            summary.rejected += len(rejects)
            summary.failures.extend(failures[: max(MAX_REPORTED - len(summary.failures), 0)])
            summary.rejects.extend(rejects[: max(MAX_REPORTED - len(summary.rejects), 0)])
            bar.update(int(row["bytes"]))
            if str(row["stopped"]):
                summary.seconds = round(time.perf_counter() - start, 2)
                raise IndexingStopped(
                    f"indexing stopped: the index backend is unavailable ({row['stopped']}). "
                    f"{summary.indexed} documents were confirmed by the backend before the stop; "
                    "nothing unconfirmed is counted. When the backend is back, run again with "
                    "--resume: the ids it already holds are skipped.",
                    summary,
                )
    index.refresh(name)
    summary.seconds = round(time.perf_counter() - start, 2)
    summary.docs_per_s = round(summary.indexed / max(summary.seconds, 1e-9), 1)
    summary.count = index.count(name)
    index.close()
    return summary
