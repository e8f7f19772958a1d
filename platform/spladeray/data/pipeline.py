"""The prepare job: source -> hard negatives -> teacher scores -> parquet shards (docs/prepare.md).

Steps, each timed:

1. **read** (:func:`spladeray.data.readers.read_beir` / ``read_pairs``, streaming): the
   source's rows are checked; rejected rows go to ``rejects.jsonl`` with a reason; documents go
   once into the doc store (``_work/corpus.arrow``); accepted ``(query, positive)`` pairs are kept
   as a small table (ids, doc store rows and query texts: the one per-pair structure the driver
   holds, about 100 bytes + query text per pair).
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
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from spladeray import storage
from spladeray.config import PrepareConfig, TeacherConfig
from spladeray.data import schema
from spladeray.data.readers import RejectLog, read_beir, read_pairs
from spladeray.data.schema import is_complete, load_manifest, summary_line
from spladeray.data.teachers import auto_teacher_gpus
from spladeray.raycluster import check_capacity, cluster_gpus, ensure_ray
from spladeray.redaction import redact_config

logger = logging.getLogger(__name__)

RUNTIME_KEYS = {"force", "progress", "actor_start_timeout_s"}  # not part of the config hash
WORK_DIR = "_work"  # the run's scratch files (doc store, mining index); deleted when done
SMALL_TASK_CPUS = 0.25  # the ensemble task and the parquet writer each reserve this much
PAIR_COLUMNS = list(schema.PAIR_COLUMNS)


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


def check_pools(cfg: PrepareConfig) -> None:
    """Fail fast, with the numbers, when the actor pools cannot all be placed at once.

    Every fixed pool (and the minimum of an autoscaling one) starts whole before data flows, so
    Ray Data would otherwise wait forever for CPUs or GPUs that the cluster does not have.
    """
    teachers = model_teachers(cfg)
    per_actor = auto_teacher_gpus(teachers, cluster_gpus())
    neg = cfg.negatives
    cpus = neg.actors * neg.num_cpus if neg.method != "none" else 0.0
    cpus += sum(t.actors * t.num_cpus for t in teachers.values())
    gpus = sum(t.actors * per_actor[n] for n, t in teachers.items())
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
    teacher_gpus = auto_teacher_gpus(model_teachers(cfg), cluster_gpus())
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
            num_gpus=teacher_gpus[name] or None,
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
    # a URI's user info or a ${VAR} secret in a path never reaches the saved manifest
    storage.write_json(storage.join(out, schema.MANIFEST_FILE), redact_config(manifest))
    storage.delete(work_uri)
    if remote:
        shutil.rmtree(local, ignore_errors=True)
    storage.write_text(storage.join(out, schema.SUCCESS_FILE), digest + "\n")  # last: done
    echo(summary_line(manifest))
    return PrepareResult.from_manifest(manifest)
