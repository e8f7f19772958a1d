"""The prepare job: source -> hard negatives -> teacher scores -> parquet shards (docs/prepare.md).

Steps, each timed:

1. **read** (driver, streaming): the source's rows are checked; rejected rows go to
   ``rejects.jsonl`` with a reason; documents go once into the doc store (``_work/corpus.arrow``);
   accepted ``(query, positive)`` pairs are kept as a small table (ids and query texts: the one
   per-pair structure the driver holds, about 100 bytes + query text per pair).
2. **index**: the retrieval index for mining, built once (:mod:`spladeray.data.negatives`).
3. **pipeline** (Ray Data, streaming): pairs -> ``NegativeMiner`` actors -> one ``TeacherScorer``
   actor pool per enabled teacher -> ensemble task -> ``write_parquet``.

The output folder (its layout and columns: :mod:`spladeray.data.schema`) gets ``manifest.json``
and then ``_SUCCESS``; a second run with the same config hash (config + input file sizes/mtimes)
returns at once unless forced. :func:`run_prepare` is the stage; it returns a
:class:`PrepareResult`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from spladeray import storage
from spladeray.config import PrepareConfig, TeacherConfig
from spladeray.data import schema
from spladeray.data.docstore import DocStore, DocStoreWriter
from spladeray.data.readers import beir_corpus_dataset, iter_qrels, iter_queries, pairs_dataset
from spladeray.raycluster import check_capacity, cluster_gpus, ensure_ray

logger = logging.getLogger(__name__)

RUNTIME_KEYS = {"force", "progress", "actor_start_timeout_s"}  # not part of the config hash
WORK_DIR = "_work"  # the run's scratch files (doc store, mining index); deleted when done
SMALL_TASK_CPUS = 0.25  # the ensemble task and the parquet writer each reserve this much
PAIR_COLUMNS = list(schema.PAIR_COLUMNS)


# ---------------------------------------------------------------------------- rejects
class RejectLog:
    """Writes ``rejects.jsonl`` as rejects arrive and counts them by reason."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.by_reason: Counter[str] = Counter()

    def add(self, source: str, line: int | None, reason: str, id=None, raw=None) -> None:
        row = {"source": source, "line": line, "id": id, "reason": reason, "raw": raw}
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.by_reason[reason.split(" (")[0]] += 1

    def __len__(self) -> int:
        return sum(self.by_reason.values())

    def close(self) -> None:
        self._fh.close()


# ---------------------------------------------------------------------------- step 1: read
@dataclass
class SourceData:
    pairs: pa.Table
    counts: dict = field(default_factory=dict)


ROW_COLUMNS = {"positive_row": pa.int64(), "given_negative_rows": pa.list_(pa.int64())}
"""Doc store rows the miners read texts and scores by (they hold no ``id -> row`` dict)."""


def _pairs_table(pairs: list[dict]) -> pa.Table:
    by_query: dict[str, list[str]] = defaultdict(list)
    for p in pairs:
        by_query[p["query_id"]].append(p["positive_id"])
    for p in pairs:
        p["query_positive_ids"] = by_query[p["query_id"]]
        p.setdefault("given_negative_ids", [])
        p.setdefault("given_negative_rows", [])
    columns = [*PAIR_COLUMNS[:4], "query_positive_ids"]
    fields = [pa.field(c, schema.PAIR_COLUMNS[c]) for c in columns]
    fields.append(pa.field("given_negative_ids", schema.STRING_LIST))
    fields += [pa.field(c, t) for c, t in ROW_COLUMNS.items()]
    return pa.Table.from_pylist(pairs, schema=pa.schema(fields))


class _QueryLimit:
    """``holdout`` then ``max_queries``: keep the queries of the holdout's part (all without
    one), and of those the first N distinct; count (not reject) the rest."""

    def __init__(self, limit: int | None, holdout=None) -> None:
        self.limit, self.kept, self.skipped = limit, set(), 0
        self.holdout, self.held_out = holdout, 0

    def allows(self, qid: str) -> bool:
        if self.holdout is not None:
            from spladeray.data.split import in_part

            h = self.holdout
            if not in_part(qid, h.part, h.fraction, h.seed):
                self.held_out += 1
                return False
        if self.limit is None or qid in self.kept or len(self.kept) < self.limit:
            self.kept.add(qid)
            return True
        self.skipped += 1
        return False


def read_beir(source, work: Path, rejects: RejectLog) -> SourceData:
    """Queries and qrels in the driver; the corpus streamed through Ray Data into the doc store."""
    beir = source.path
    queries: dict[str, str] = {}
    for qid, text in iter_queries(beir, rejects.add):
        if qid in queries:
            rejects.add(storage.join(beir, "queries.jsonl"), None, "duplicate query id", id=qid)
        else:
            queries[qid] = text
    corpus_path = storage.join(beir, "corpus.jsonl")
    with DocStoreWriter(work / "corpus.arrow") as store:
        for batch in beir_corpus_dataset(beir).iter_batches(batch_format="pyarrow"):
            for row in batch.filter(batch.column("reject").is_valid()).to_pylist():
                rejects.add(corpus_path, None, row["reject"], id=row["doc_id"], raw=row["raw"])
            ok = batch.filter(batch.column("reject").is_null())
            ids = ok.column("doc_id").to_pylist()
            for i in store.add(ids, ok.column("text").to_pylist()):
                rejects.add(corpus_path, None, "duplicate _id", id=ids[i])
        docs = len(store)
        qrels_path = storage.join(beir, "qrels", f"{source.split}.tsv")
        pairs, seen, limit, lines = [], set(), _QueryLimit(source.max_queries, source.holdout), 0
        for n, qid, did, rel in iter_qrels(qrels_path, rejects.add):
            lines += 1
            bad = None
            if rel < source.min_relevance:
                bad = f"relevance {rel} below min_relevance {source.min_relevance}"
            elif qid not in queries:
                bad = f"unknown query id {qid} (missing from queries.jsonl or rejected there)"
            elif did not in store:
                bad = f"unknown corpus id {did} (missing from corpus.jsonl or rejected there)"
            elif (qid, did) in seen:
                bad = "duplicate qrels pair"
            if bad:
                rejects.add(str(qrels_path), n, bad, id=f"{qid}\t{did}")
            elif limit.allows(qid):
                seen.add((qid, did))
                pair = {"query_id": qid, "query": queries[qid], "positive_id": did}
                pairs.append({**pair, "positive_row": store.row(did)})
    texts = DocStore(work / "corpus.arrow").texts_at(p["positive_row"] for p in pairs)
    for p, text in zip(pairs, texts, strict=True):
        p["positive"] = text
    counts = {
        "queries": len(queries),
        "docs": docs,
        "qrels_lines": lines,
        "skipped_by_max_queries": limit.skipped,
        "held_out_pairs": limit.held_out,
    }
    return SourceData(_pairs_table(pairs), counts)


def read_pairs(source, work: Path, rejects: RejectLog) -> SourceData:
    """A pairs file / HF dataset streamed through Ray Data; its texts form the mining corpus."""
    name = source.hf_name or str(source.path)
    pairs, seen, limit, rows = [], set(), _QueryLimit(source.max_queries, source.holdout), 0
    with DocStoreWriter(work / "corpus.arrow") as store:
        for batch in pairs_dataset(source).iter_batches(batch_format="pyarrow"):
            for row in batch.to_pylist():
                rows += 1
                key = (row["query_id"], row["positive_id"])
                if row["reject"]:
                    rejects.add(name, None, row["reject"], raw=row["raw"])
                elif key in seen:
                    rejects.add(name, None, "duplicate (query, positive) pair", id="\t".join(key))
                elif limit.allows(row["query_id"]):
                    seen.add(key)
                    store.add(
                        [row["positive_id"], *row["negative_ids"]],
                        [row["positive"], *row["negatives"]],
                    )
                    row["given_negative_ids"] = row["negative_ids"]
                    row["positive_row"] = store.row(row["positive_id"])
                    row["given_negative_rows"] = [store.row(d) for d in row["negative_ids"]]
                    keys = [*PAIR_COLUMNS[:4], "given_negative_ids", *ROW_COLUMNS]
                    pairs.append({k: row[k] for k in keys})
        docs = len(store)
    counts = {
        "rows": rows,
        "docs": docs,
        "skipped_by_max_queries": limit.skipped,
        "held_out_pairs": limit.held_out,
    }
    return SourceData(_pairs_table(pairs), counts)


# ---------------------------------------------------------------------------- step 2: index
def build_index(cfg: PrepareConfig, work: Path, work_uri: str) -> dict:
    """The mining index under ``<work_uri>/index``. ``work`` is the driver's local copy of the
    work files (the same folder when the output is local)."""
    import ray

    from spladeray.data import negatives

    neg = cfg.negatives
    if neg.method == "bm25":
        # A task on any node (reads the store by URI, uploads the index); max_calls=1: the worker
        # exits afterwards instead of being reused with the index's memory.
        task = ray.remote(num_cpus=neg.num_cpus, max_calls=1)(negatives.build_bm25)
        store, index_dir = storage.join(work_uri, "corpus.arrow"), storage.join(work_uri, "index")
        return ray.get(task.remote(store, index_dir, neg.stemmer, neg.stopwords))
    if neg.method in ("dense", "sparse"):
        if neg.model is None:
            raise ValueError(f"prepare.negatives.model is required for method {neg.method!r}")
        with storage.staged_dir(storage.join(work_uri, "index")) as index_dir:
            return negatives.build_model_index(
                neg.method,
                work / "corpus.arrow",
                index_dir,
                neg.model,
                neg.batch_size,
                neg.actors,
                neg.num_cpus,
                neg.num_gpus,
            )
    return {}


# ---------------------------------------------------------------------------- step 3: pipeline
def _finish(batch: pa.Table, weights: dict[str, float], scale: float | None) -> pa.Table:
    """Ensemble column (when enabled) and the documented column order."""
    from spladeray.data.teachers import add_ensemble

    if scale is not None:
        batch = add_ensemble(batch, weights, scale)
    names = [*weights, schema.ENSEMBLE] if scale is not None else list(weights)
    return batch.select(PAIR_COLUMNS + [schema.score_column(n) for n in names])


def enabled_teachers(cfg: PrepareConfig) -> dict[str, TeacherConfig]:
    return {name: t for name, t in cfg.teachers.items() if t.enabled}


def model_teachers(cfg: PrepareConfig) -> dict[str, TeacherConfig]:
    """The enabled teachers that run a model in their own actor pool (all but ``bm25``)."""
    return {name: t for name, t in enabled_teachers(cfg).items() if t.kind != "bm25"}


def teacher_gpus(teacher: TeacherConfig, cluster_has_gpus: bool) -> float:
    """GPUs each actor of ``teacher`` reserves.

    ``device: cpu`` reserves none; ``auto`` reserves ``num_gpus`` when the cluster has GPUs and
    runs on CPU otherwise; ``cuda`` always reserves ``num_gpus``, so asking for a GPU on a
    cluster without one fails in :func:`check_pools` instead of waiting for it forever.
    """
    if teacher.device == "cpu" or (teacher.device == "auto" and not cluster_has_gpus):
        return 0.0
    return teacher.num_gpus


def check_pools(cfg: PrepareConfig) -> None:
    """Fail fast, with the numbers, when the actor pools cannot all be placed at once.

    Every fixed pool (and the minimum of an autoscaling one) starts whole before data flows, so
    Ray Data would otherwise wait forever for CPUs or GPUs that the cluster does not have.
    """
    has_gpus = cluster_gpus() > 0
    teachers = model_teachers(cfg).values()
    neg = cfg.negatives
    cpus = neg.actors * neg.num_cpus if neg.method != "none" else 0.0
    cpus += sum(t.actors * t.num_cpus for t in teachers)
    gpus = sum(t.actors * teacher_gpus(t, has_gpus) for t in teachers)
    if neg.method != "none":
        gpus += neg.actors * neg.num_gpus
    check_capacity(
        f"prepare (its actor pools, plus {2 * SMALL_TASK_CPUS:g} CPU for small tasks)",
        cpus=cpus + 2 * SMALL_TASK_CPUS,
        gpus=gpus,
        hint="lower prepare.negatives/teachers.*.actors, num_cpus or num_gpus, "
        "set a teacher's device to cpu, or add nodes",
    )


def run_pipeline(cfg: PrepareConfig, pairs: pa.Table, work: str, stats) -> None:
    """Mine, score and write the shards. ``work`` is the work files' path or URI: the miner
    actors read it wherever they run (a URI through a per-node cache)."""
    import ray.data

    from spladeray.data.negatives import NegativeMiner
    from spladeray.data.teachers import TeacherScorer

    teachers = enabled_teachers(cfg)
    has_gpus = cluster_gpus() > 0
    size = cfg.batch_size
    blocks = [pairs.slice(s, size) for s in range(0, pairs.num_rows, size)] or [pairs]
    neg = cfg.negatives
    bm25_columns = [schema.score_column(n) for n, t in teachers.items() if t.kind == "bm25"]
    ds = ray.data.from_arrow(blocks).map_batches(
        NegativeMiner,
        fn_constructor_kwargs={
            "work_dir": str(work),
            "cfg": neg,
            "stats": stats,
            "score_columns": bm25_columns,
        },
        compute=ray.data.ActorPoolStrategy(size=neg.actors),
        num_cpus=neg.num_cpus,
        num_gpus=neg.num_gpus or None,
        batch_size=None,
        batch_format="pyarrow",
    )
    for name, t in model_teachers(cfg).items():  # BM25 teachers were scored by the miner
        ds = ds.map_batches(
            TeacherScorer,
            fn_constructor_kwargs={"name": name, "cfg": t, "stats": stats},
            # max_size = min_size is a fixed pool (what size= sets in Ray)
            compute=ray.data.ActorPoolStrategy(
                min_size=t.actors, max_size=t.max_actors or t.actors
            ),
            num_cpus=t.num_cpus,
            num_gpus=teacher_gpus(t, has_gpus) or None,
            batch_size=None,
            batch_format="pyarrow",
        )
    use_ensemble = cfg.ensemble.enabled and teachers
    weights = {n: t.weight for n, t in teachers.items()}
    if use_ensemble and sum(weights.values()) <= 0:
        raise ValueError("prepare.teachers: the ensemble needs a teacher with weight > 0")
    ds = ds.map_batches(
        _finish,
        fn_kwargs={"weights": weights, "scale": cfg.ensemble.scale if use_ensemble else None},
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=SMALL_TASK_CPUS,
    )
    fs, shards = storage.resolve(storage.join(cfg.output_dir, schema.SHARDS_DIR))
    ds.write_parquet(
        shards,
        filesystem=fs,
        min_rows_per_file=cfg.rows_per_shard,
        ray_remote_args={"num_cpus": SMALL_TASK_CPUS},
    )


# ---------------------------------------------------------------------------- the job
@dataclass(frozen=True)
class PrepareResult:
    """What :func:`run_prepare` did: the output folder, its row count and its manifest.

    ``skipped`` is true when the folder was already complete for this config (nothing ran).
    ``manifest`` is the content of ``manifest.json`` (plus ``skipped``).
    """

    output_dir: str  # a local path or a URI
    rows: int
    skipped: bool
    manifest: dict

    @classmethod
    def from_manifest(cls, manifest: dict) -> PrepareResult:
        return cls(str(manifest["output_dir"]), manifest["rows"], manifest["skipped"], manifest)


def config_hash(cfg: PrepareConfig) -> str:
    """Hash of the prepare config (minus run-time switches) and the input files' size/mtime."""
    src = cfg.source
    if src.format == "beir" and src.path is not None:
        inputs = [storage.join(src.path, name) for name in ("corpus.jsonl", "queries.jsonl")]
        inputs.append(storage.join(src.path, "qrels", f"{src.split}.tsv"))
    else:
        inputs = [src.path] if src.path is not None else []
    blob = {
        "schema": schema.SCHEMA_VERSION,
        "config": cfg.model_dump(mode="json", exclude=RUNTIME_KEYS),
        "inputs": [s for p in inputs for s in storage.stamp(p)],
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def load_manifest(output_dir: str | Path) -> dict | None:
    uri = storage.join(output_dir, schema.MANIFEST_FILE)
    return storage.read_json(uri) if storage.exists(uri) else None


def is_complete(output_dir: str | Path, digest: str) -> bool:
    manifest = load_manifest(output_dir)
    done = storage.exists(storage.join(output_dir, schema.SUCCESS_FILE))
    return done and manifest is not None and manifest.get("config_hash") == digest


def _clear(out: str) -> None:
    """Remove a previous run's output (``_SUCCESS`` first, so nothing half-deleted looks done)."""
    names = (schema.SUCCESS_FILE, schema.MANIFEST_FILE, schema.REJECTS_FILE)
    for name in (*names, schema.SHARDS_DIR, WORK_DIR):
        uri = storage.join(out, name)
        if storage.exists(uri):
            storage.delete(uri)


@contextmanager
def _data_context(cfg: PrepareConfig):
    """Progress bars per config; a fixed actor pool starts whole before data flows (so every
    actor gets work and a pool that cannot start fails loudly); blocks leave every stage in the
    order they entered it. Restored afterwards.

    ``preserve_order``: without it the shards hold the rows in whichever order the actors
    finished their batches, so two prepares of one config could write the same rows in
    different orders, and training (whose shuffle is seeded, but over the rows in shard order)
    would train two models from one config and seed (tests/data/test_prepare.py saw the order
    change between runs). With it, one config gives one shard order. The possible cost,
    head-of-line waiting behind a slow batch, did not show in bench/prepare.py (docs/prepare.md).
    """
    import copy

    from ray.data import DataContext

    ctx = DataContext.get_current()
    keys = ("enable_progress_bars", "enable_operator_progress_bars", "wait_for_min_actors_s")
    saved = {k: getattr(ctx, k) for k in keys}
    saved["execution_options"] = copy.copy(ctx.execution_options)
    ctx.enable_progress_bars = ctx.enable_operator_progress_bars = cfg.progress
    ctx.wait_for_min_actors_s = cfg.actor_start_timeout_s
    ctx.execution_options.preserve_order = True
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)


def pool_sizes(cfg: PrepareConfig) -> dict[str, int | list[int]]:
    """The actor pool each stage asked for: ``n``, or ``[min, max]`` when it autoscales."""
    pools: dict[str, int | list[int]] = {}
    if cfg.negatives.method != "none":
        pools["mine"] = cfg.negatives.actors
    for name, t in model_teachers(cfg).items():
        pools[schema.score_column(name)] = [t.actors, t.max_actors] if t.max_actors else t.actors
    return pools


@contextmanager
def _timed(timings: dict, name: str):
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 3)


def _shard_rows(shards: str) -> tuple[list[str], int]:
    names = [n for n in storage.list_files(shards) if n.endswith(".parquet")]
    fs, path = storage.resolve(shards)
    rows = 0
    for name in names:
        with fs.open_input_file(f"{path}/{name}") as f:
            rows += pq.ParquetFile(f).metadata.num_rows
    return names, rows


def run_prepare(
    cfg: PrepareConfig, *, force: bool = False, ray_config=None, echo=print
) -> PrepareResult:
    """Run (or reuse) the prepare stage; ``result.skipped`` when the output was up to date.

    Ray is started (or joined, per ``ray_config``) only when there is work to do; the actor
    pools' CPUs and GPUs are checked against the cluster before anything is read or cleared.
    """
    import ray

    from spladeray.data.stats import StageStats

    out = str(cfg.output_dir)
    remote = storage.is_remote(out)
    source = cfg.source.path
    reads = [source] if source is not None and storage.is_remote(source) else []
    if remote or reads:  # a bad bucket, prefix or credentials: one clear error before any work
        storage.preflight(read=reads, write=[out] if remote else [])
    digest = config_hash(cfg)
    if not (force or cfg.force) and is_complete(out, digest):
        manifest = {**load_manifest(out), "skipped": True}
        echo(f"prepare: output up to date (config hash {digest}), nothing to do: {out}")
        echo(summary_line(manifest))
        return PrepareResult.from_manifest(manifest)
    if load_manifest(out) is not None:
        logger.info("rebuilding %s (forced or config changed)", out)
    ensure_ray(ray_config)
    check_pools(cfg)
    _clear(out)
    # The driver reads the source and writes rejects and the doc store to a local folder: the
    # output folder itself, or for a URI a staging folder whose work files are uploaded to
    # <uri>/_work for the actors (on any node) and which is removed at the end.
    local = Path(tempfile.mkdtemp(prefix="spladeray-prepare-")) if remote else Path(out)
    work = local / WORK_DIR
    work.mkdir(parents=True)
    work_uri = storage.join(out, WORK_DIR)
    timings: dict[str, float] = {}
    rejects = RejectLog(local / schema.REJECTS_FILE)
    start = time.perf_counter()
    stats = StageStats.remote()
    try:
        with _data_context(cfg):
            with _timed(timings, "read"):
                reader = read_beir if cfg.source.format == "beir" else read_pairs
                source = reader(cfg.source, work, rejects)
            with _timed(timings, "index"):
                if remote:  # the doc store, for the index builder and the miners on any node
                    storage.upload(work, work_uri)
                index_info = build_index(cfg, work, work_uri)
            with _timed(timings, "pipeline"):
                run_pipeline(cfg, source.pairs, work_uri, stats)
        stages = ray.get(stats.summary.remote())
        for stage, pool in pool_sizes(cfg).items():
            stages.setdefault(stage, {})["pool"] = pool
    finally:
        rejects.close()
        ray.kill(stats)
    shard_dir = storage.join(out, schema.SHARDS_DIR)
    shards, rows = _shard_rows(shard_dir)
    timings["total"] = round(time.perf_counter() - start, 3)
    teachers = list(enabled_teachers(cfg))
    columns = []
    if shards:
        fs, path = storage.resolve(shard_dir)
        columns = pq.read_schema(f"{path}/{shards[0]}", filesystem=fs).names
    manifest = {
        "schema_version": schema.SCHEMA_VERSION,
        "config_hash": digest,
        "output_dir": out,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows": rows,
        "pairs_accepted": source.pairs.num_rows,
        "rejected": len(rejects),
        "rejects_by_reason": dict(rejects.by_reason),
        "source": {"format": cfg.source.format, **source.counts},
        "index": {"method": cfg.negatives.method, **index_info},
        "teachers": teachers,
        "teacher_weights": {n: cfg.teachers[n].weight for n in teachers},
        "ensemble": {
            "enabled": bool(cfg.ensemble.enabled and teachers),
            "scale": cfg.ensemble.scale,
        },
        "num_negatives": cfg.negatives.num_negatives,
        "columns": columns,
        "shards": shards,
        "timings_s": timings,
        "stages": stages,
        "skipped": False,
    }
    if rows != source.pairs.num_rows:
        raise RuntimeError(f"wrote {rows} rows but accepted {source.pairs.num_rows} pairs")
    if remote:
        storage.upload(local / schema.REJECTS_FILE, storage.join(out, schema.REJECTS_FILE))
    storage.write_json(storage.join(out, schema.MANIFEST_FILE), manifest)
    storage.delete(work_uri)
    if remote:
        shutil.rmtree(local, ignore_errors=True)
    storage.write_text(storage.join(out, schema.SUCCESS_FILE), digest + "\n")  # last: done
    echo(summary_line(manifest))
    return PrepareResult.from_manifest(manifest)


def summary_line(m: dict) -> str:
    """``prepare: rows, rejects, seconds, rows/s per stage`` on one line."""
    t = m["timings_s"]
    parts = [
        f"prepare: {m['rows']} rows, {m['rejected']} rejected, {t['total']:.1f}s",
        f"read {t['read']:.1f}s",
        f"index {t['index']:.1f}s",
        f"pipeline {t['pipeline']:.1f}s ({m['rows'] / max(t['pipeline'], 1e-9):.1f} rows/s)",
    ]
    for stage, s in m.get("stages", {}).items():
        if "rows_per_actor_s" in s:
            used = f"{s['actors_used']} of {s['pool']}" if "pool" in s else s["actors_used"]
            parts.append(f"{stage} {s['rows_per_actor_s']:.1f} rows/actor-s x{used}")
    return " | ".join(parts) + f" -> {m['output_dir']}"
