"""Evaluate several systems on several BEIR datasets: quality, sparsity, latency, throughput.

This is the one BEIR evaluation pipeline: ``jobs/evaluate.py``, the demo and training-time
evaluation (:mod:`spladeray.train.evaluation`) all run it, with the retrievers of
:mod:`spladeray.retrieval`.

``run_evaluation(cfg)`` is what ``jobs/evaluate.py`` and the demo call: it reads the
``evaluate:`` section, runs every system on every dataset, averages over datasets (BEIR-style
macro average), prints the table and writes ``results.json``, ``results.md``, ``quality_vs_dims.png``
and one TREC run file per dataset and system under ``evaluate.output_dir``: a local directory
or a URI (``s3://bucket/prefix``). A URI is checked for writing before any work starts; the files
are written to a local staging directory exactly as for a local run, then uploaded, with
``results.json`` last (it marks the evaluation complete).

Per system and dataset:

- quality: the configured ``ir-measures`` measures over the split's judged queries;
- sparsity: average / p95 active dimensions of queries and documents, expected FLOPS;
- latency: ``latency_queries`` queries answered one at a time (encode + search), p50 / p99 ms;
- throughput: documents indexed per second (encoding + index writes; tokenising for BM25).

A hybrid system fuses the runs of systems listed before it; its latency is the sum of its parts'
per-query latencies plus the fusion, its dimensions and FLOPS the sums of its parts'.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spladeray import storage
from spladeray.config import (
    Config,
    EvalDatasetConfig,
    EvalDenseConfig,
    EvalHybridConfig,
    EvalSparseConfig,
    EvaluateConfig,
    ModelConfig,
)
from spladeray.data.beir import Rejects, doc_text, iter_corpus, load_qrels, load_queries
from spladeray.eval.metrics import DEFAULT_MEASURES, evaluate_run, write_trec_run
from spladeray.eval.sparsity import sparsity_stats
from spladeray.raycluster import cluster_gpus, ensure_ray
from spladeray.retrieval.base import Retriever
from spladeray.retrieval.fusion import fuse

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- data
def restrict_qrels(
    qrels: dict[str, dict[str, int]], queries: dict[str, str], doc_ids: set[str] | None = None
) -> dict[str, dict[str, int]]:
    """Keep judged queries that have a text; with ``doc_ids``, only judgments on those documents
    (queries left without a relevant document are dropped)."""
    out = {}
    for qid, rel in qrels.items():
        if qid not in queries:
            continue
        if doc_ids is not None:
            rel = {d: r for d, r in rel.items() if d in doc_ids}
            if not any(r > 0 for r in rel.values()):
                continue
        if rel:
            out[qid] = rel
    return out


@dataclass
class Corpus:
    """A BEIR corpus read where it is needed, never kept: ``batches`` streams it in the calling
    process, ``dataset`` as a Ray Dataset for the encoder actors, ``load`` holds it whole (only
    for retrievers that keep their corpus in memory by design: BM25, dense, exact sparse)."""

    beir_dir: str
    limit: int | None = None
    size: int = 0  # documents (rejected rows excluded), counted by Dataset.load

    def iter_docs(self):
        """``(id, text)`` per document, in corpus order; rejected rows skipped (counted once,
        by :meth:`Dataset.load`)."""
        for doc in iter_corpus(self.beir_dir, self.limit, Rejects()):
            yield doc["_id"], doc_text(doc)

    def batches(self, size: int):
        """``(ids, texts)`` lists of at most ``size`` documents."""
        ids, texts = [], []
        for doc_id, text in self.iter_docs():
            ids.append(doc_id)
            texts.append(text)
            if len(ids) == size:
                yield ids, texts
                ids, texts = [], []
        if ids:
            yield ids, texts

    def load(self) -> tuple[list[str], list[str]]:
        """Every ``(id, text)`` in two lists (refused above the driver cap,
        :data:`spladeray.index.encoding.DRIVER_DOCS_CAP`)."""
        from spladeray.index.encoding import check_driver_cap

        check_driver_cap(self.size, f"loading the corpus of {self.beir_dir}")
        ids, texts = [], []
        for doc_id, text in self.iter_docs():
            ids.append(doc_id)
            texts.append(text)
        return ids, texts

    def dataset(self):
        """The corpus as a Ray Dataset of ``id`` / ``text`` rows (rejected rows filtered out).

        Without a limit it is read by Ray Data tasks and streamed to the actors; with
        ``corpus_limit`` the first ``limit`` documents are taken here, in corpus order (Ray
        Data's ``limit`` keeps the first rows to arrive, which need not be the first rows of
        the file), so a limited corpus is held in this process: at most ``limit`` documents.
        """
        import ray.data

        if self.limit is not None:
            ids, texts = self.load()
            return ray.data.from_items(
                [{"id": i, "text": t} for i, t in zip(ids, texts, strict=True)]
            )
        from spladeray.data.readers import beir_corpus_dataset

        return beir_corpus_dataset(self.beir_dir).map_batches(_usable_rows, batch_format="pyarrow")


def _usable_rows(batch):
    """Corpus rows without a reject, as ``id`` / ``text`` (rejects were counted on load)."""
    import pyarrow.compute as pc

    kept = batch.filter(pc.is_null(batch.column("reject")))
    return kept.select(["doc_id", "text"]).rename_columns(["id", "text"])


@dataclass
class Dataset:
    """One BEIR split: the judged queries and their qrels in memory, the corpus streamed."""

    name: str
    beir_dir: str  # a local path or a URI
    split: str
    corpus: Corpus
    queries: dict[str, str]  # judged queries only, in qrels order
    qrels: dict[str, dict[str, int]]
    rejected: int = 0

    @classmethod
    def load(cls, cfg: EvalDatasetConfig) -> Dataset:
        """Reads the queries and qrels, and streams the corpus once to count it and (with
        ``corpus_limit``) to keep only the judgments on its documents."""
        rejects = Rejects()
        queries = load_queries(cfg.beir_dir, rejects)
        qrels = load_qrels(cfg.beir_dir, cfg.split, rejects)
        judged = {d for rel in qrels.values() for d in rel}
        present: set[str] = set()  # judged documents in the (limited) corpus: bounded by qrels
        size = 0
        for doc in iter_corpus(cfg.beir_dir, cfg.corpus_limit, rejects):
            size += 1
            if doc["_id"] in judged:
                present.add(doc["_id"])
        qrels = restrict_qrels(qrels, queries, present if cfg.corpus_limit else None)
        if cfg.holdout is not None:  # one part of the split's queries (spladeray.data.split)
            from spladeray.data.split import select

            qrels = {q: qrels[q] for q in select(qrels, cfg.holdout)}
        if not qrels:
            raise ValueError(f"{cfg.beir_dir} split {cfg.split!r}: no judged queries to evaluate")
        for row in rejects.rows[:20]:  # all counted in info()["rejected_rows"]
            logger.warning("rejected %s:%d: %s", row["source"], row["line"], row["reason"])
        if len(rejects) > 20:
            logger.warning("... and %d more rejected lines", len(rejects) - 20)
        return cls(
            name=cfg.name or storage.basename(cfg.beir_dir),
            beir_dir=cfg.beir_dir,
            split=cfg.split,
            corpus=Corpus(cfg.beir_dir, cfg.corpus_limit, size),
            queries={q: queries[q] for q in qrels},
            qrels=qrels,
            rejected=len(rejects),
        )

    @property
    def num_docs(self) -> int:
        return self.corpus.size

    @property
    def doc_ids(self) -> list[str]:
        """Every document id (read from the corpus: held only while the caller keeps it)."""
        return self.corpus.load()[0]

    @property
    def doc_texts(self) -> list[str]:
        """Every document text (as :attr:`doc_ids`)."""
        return self.corpus.load()[1]

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "beir_dir": str(self.beir_dir),
            "split": self.split,
            "documents": self.num_docs,
            "queries": len(self.queries),
            "rejected_rows": self.rejected,
        }


# ----------------------------------------------------------------------------- results
@dataclass
class SystemResult:
    """One system on one dataset (or its average over datasets)."""

    system: str
    kind: str
    metrics: dict[str, float]
    sparsity: dict[str, float | None] | None = None
    latency_ms: dict[str, float] | None = None
    docs_per_s: float | None = None
    index_s: float | None = None
    run: dict[str, dict[str, float]] | None = field(default=None, repr=False)
    latencies: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "kind": self.kind,
            "metrics": self.metrics,
            "sparsity": self.sparsity,
            "latency_ms": self.latency_ms,
            "docs_per_s": self.docs_per_s,
            "index_s": self.index_s,
        }


@dataclass
class EvalResults:
    """All results of one evaluation; ``average`` is the macro average over datasets."""

    measures: list[str]
    datasets: list[dict[str, Any]]
    systems: list[dict[str, Any]]
    per_dataset: dict[str, dict[str, SystemResult]]
    average: dict[str, SystemResult]
    title: str = "spladeray evaluation"
    paths: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "measures": self.measures,
            "datasets": self.datasets,
            "systems": self.systems,
            "average": {k: v.to_json() for k, v in self.average.items()},
            "per_dataset": {
                d: {k: v.to_json() for k, v in res.items()} for d, res in self.per_dataset.items()
            },
        }

    def markdown(self) -> str:
        from spladeray.eval.report import results_markdown

        return results_markdown(self)


# ----------------------------------------------------------------------------- systems
def _latency(values: Sequence[float]) -> dict[str, float] | None:
    if len(values) == 0:
        return None
    arr = np.asarray(values, dtype=np.float64) * 1000.0
    return {
        "p50": float(np.percentile(arr, 50)),
        "p99": float(np.percentile(arr, 99)),
        "mean": float(arr.mean()),
        "n": len(arr),
    }


def build_retriever(
    system,
    *,
    default_model: ModelConfig | None = None,
    encoder=None,
    distributed: EvaluateConfig | None = None,
    ray_cfg=None,
    show_progress: bool = False,
) -> Retriever:
    """The :class:`Retriever` for one ``evaluate.systems`` entry (not hybrids).

    ``encoder`` replaces the sparse model the config names (e.g. a freshly trained one);
    ``distributed`` (an :class:`EvaluateConfig` with ``distributed: true``) moves corpus
    encoding to a Ray Data actor pool.
    """
    from spladeray.eval import distributed as dist

    use_ray = distributed is not None and distributed.distributed
    if use_ray:
        ensure_ray(ray_cfg, log_to_driver=False)
    if system.kind == "bm25":
        from spladeray.retrieval import BM25Retriever

        return BM25Retriever.from_config(system)
    if system.kind == "sparse":
        from spladeray.retrieval import SparseRetriever

        model_cfg = system.model or default_model
        given = encoder is not None
        if encoder is None:
            if model_cfg is None:
                raise ValueError(f"sparse system {system.name!r} has no model")
            from spladeray.model import load_encoder_from_config

            encoder = load_encoder_from_config(model_cfg)
        if system.index is not None:
            from spladeray.eval.indexed import IndexedSparseRetriever

            pool = None
            if use_ray:  # the actors encode the corpus and write it into the index themselves
                pool = {
                    "factory": dist.SparseFactory(encoder=encoder)
                    if given
                    else dist.SparseFactory(model_cfg=model_cfg),
                    "num_actors": distributed.num_actors,
                    "batch_size": distributed.actor_batch_size,
                    "num_gpus": _actor_gpus(model_cfg.device if model_cfg else "cpu"),
                }
            return IndexedSparseRetriever(
                encoder,
                system.index,
                system.name,
                pool=pool,
                hybrid=system.hybrid,
                rrf_k=system.rrf_k,
                show_progress=show_progress,
            )
        encode_fn = None
        if use_ray:
            # A loaded encoder (e.g. just trained) travels to the actors; else each loads it.
            factory = (
                dist.SparseFactory(encoder=encoder)
                if given
                else dist.SparseFactory(model_cfg=model_cfg)
            )
            encode_fn = dist.ActorPoolEncoder(
                factory,
                "sparse",
                num_actors=distributed.num_actors,
                batch_size=distributed.actor_batch_size,
                num_gpus=_actor_gpus(model_cfg.device if model_cfg else "cpu"),
            )
        return SparseRetriever(
            encoder, system.name, encode_fn=encode_fn, show_progress=show_progress
        )
    if system.kind == "dense":
        from spladeray.retrieval import DenseModel, DenseRetriever

        encode_fn = None
        if use_ray:
            encode_fn = dist.ActorPoolEncoder(
                dist.DenseFactory(system),
                "dense",
                num_actors=distributed.num_actors,
                batch_size=distributed.actor_batch_size,
                num_gpus=_actor_gpus(system.device),
            )
        return DenseRetriever(
            DenseModel.from_config(system),
            system.name,
            encode_fn=encode_fn,
            show_progress=show_progress,
        )
    raise ValueError(f"no retriever for system kind {system.kind!r}")


def _file_name(name: str) -> str:
    """A system or dataset name made safe for a file name (``bm25+splade rrf`` -> ``bm25+splade_rrf``)."""
    return re.sub(r"[^A-Za-z0-9_.+\-]+", "_", name).strip("._") or "unnamed"


def _actor_gpus(device: str) -> float:
    """One GPU per encoder actor when the cluster has GPUs and the model may use one."""
    if device == "cpu":
        return 0.0
    return 1.0 if cluster_gpus() >= 1 else 0.0


def evaluate_retriever(
    retriever: Retriever,
    data: Dataset,
    *,
    measures: Sequence[str],
    depth: int,
    latency_queries: int,
) -> SystemResult:
    """Index ``data``'s corpus, search its judged queries, measure quality, sparsity, latency.

    An index-backed system streams the corpus into its index (:mod:`spladeray.eval.indexed`);
    the others hold it while they index it.
    """
    from spladeray.eval.indexed import IndexedSparseRetriever

    start = time.perf_counter()
    streams = isinstance(retriever, IndexedSparseRetriever)
    if streams:
        retriever.index_corpus(data.corpus)
    else:
        ids, texts = data.corpus.load()
        retriever.index(ids, texts)
        del ids, texts
    qids = list(data.queries)
    texts = [data.queries[q] for q in qids]
    results = retriever.search(texts, k=depth)
    run = dict(zip(qids, results, strict=True))
    if streams:
        sparsity = retriever.sparsity(texts)
    else:
        sparsity = sparsity_stats(retriever.query_matrix(texts), retriever.doc_matrix)
    timed = texts[:latency_queries]
    latencies = []
    if timed:
        retriever.search_one(timed[0], depth)  # warm-up, not counted
        for text in timed:
            t0 = time.perf_counter()
            retriever.search_one(text, depth)
            latencies.append(time.perf_counter() - t0)
    result = SystemResult(
        system=retriever.name,
        kind=retriever.kind,
        metrics=evaluate_run(run, data.qrels, measures),
        sparsity=sparsity,
        latency_ms=_latency(latencies),
        docs_per_s=retriever.docs_per_s,
        index_s=retriever.index_seconds,
        run=run,
        latencies=np.asarray(latencies),
    )
    logger.info(
        "%s on %s: %s (%.1fs)",
        retriever.name,
        data.name,
        ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()),
        time.perf_counter() - start,
    )
    return result


def _evaluate_hybrid(
    system: EvalHybridConfig,
    parts: Sequence[SystemResult],
    data: Dataset,
    *,
    measures: Sequence[str],
    depth: int,
) -> SystemResult:
    runs = [p.run or {} for p in parts]
    run = fuse(runs, system.method, k=system.rrf_k, weights=system.weights, depth=depth)
    # Latency: the parts run one after the other for each timed query, then the fusion.
    n = min((len(p.latencies) for p in parts if p.latencies is not None), default=0)
    latencies = []
    qids = list(data.queries)[:n]
    for i, qid in enumerate(qids):
        t0 = time.perf_counter()
        fuse(
            [{qid: r.get(qid, {})} for r in runs],
            system.method,
            k=system.rrf_k,
            weights=system.weights,
            depth=depth,
        )
        fusion_s = time.perf_counter() - t0
        latencies.append(sum(float(p.latencies[i]) for p in parts) + fusion_s)
    sparsity = None
    if all(p.sparsity for p in parts):
        sparsity = {
            "query_dims_avg": sum(p.sparsity["query_dims_avg"] for p in parts),
            "query_dims_p95": None,
            "doc_dims_avg": sum(p.sparsity["doc_dims_avg"] for p in parts),
            "doc_dims_p95": None,
            "flops": sum(p.sparsity["flops"] for p in parts),
        }
    index_s = sum(p.index_s or 0.0 for p in parts)
    return SystemResult(
        system=system.name,
        kind="hybrid",
        metrics=evaluate_run(run, data.qrels, measures),
        sparsity=sparsity,
        latency_ms=_latency(latencies),
        docs_per_s=data.num_docs / index_s if index_s > 0 else None,
        index_s=index_s,
        run=run,
        latencies=np.asarray(latencies),
    )


def describe(system, default_model: ModelConfig | None = None) -> dict[str, Any]:
    """A JSON summary of a system entry, for the report."""
    info: dict[str, Any] = {"name": system.name, "kind": system.kind}
    if isinstance(system, EvalSparseConfig):
        model = system.model or default_model
        info["model"] = model.path if model else None
        info["index"] = system.index.backend if system.index else "local (exact)"
        if system.hybrid:
            info.update(hybrid="rrf with the index's BM25", rrf_k=system.rrf_k)
    elif isinstance(system, EvalDenseConfig):
        from spladeray.retrieval import default_dense_model

        info["model"] = system.model or default_dense_model()
    elif isinstance(system, EvalHybridConfig):
        info.update(fuse=list(system.fuse), method=system.method)
        if system.method == "rrf":
            info["rrf_k"] = system.rrf_k
        if system.weights is not None:
            info["weights"] = list(system.weights)
    else:
        info.update(k1=system.k1, b=system.b, stemmer=system.stemmer, stopwords=system.stopwords)
    return info


def _average(system: str, kind: str, results: Sequence[SystemResult]) -> SystemResult:
    def mean_dict(dicts: Sequence[Mapping[str, Any] | None]) -> dict[str, Any] | None:
        if not dicts or any(d is None for d in dicts):
            return None
        out = {}
        for key in dicts[0]:
            values = [d.get(key) for d in dicts]
            out[key] = None if any(v is None for v in values) else float(np.mean(values))
        return out

    def mean(values: Sequence[float | None]) -> float | None:
        return None if any(v is None for v in values) else float(np.mean(values))

    return SystemResult(
        system=system,
        kind=kind,
        metrics=mean_dict([r.metrics for r in results]) or {},
        sparsity=mean_dict([r.sparsity for r in results]),
        latency_ms=mean_dict([r.latency_ms for r in results]),
        docs_per_s=mean([r.docs_per_s for r in results]),
        index_s=mean([r.index_s for r in results]),
    )


def evaluate_systems(
    datasets: Sequence[EvalDatasetConfig | Dataset],
    systems: Sequence,
    *,
    default_model: ModelConfig | None = None,
    encoders: Mapping[str, Any] | None = None,
    measures: Sequence[str] = DEFAULT_MEASURES,
    depth: int = 100,
    latency_queries: int = 100,
    distributed: EvaluateConfig | None = None,
    ray_cfg=None,
    runs_dir: str | Path | None = None,
    title: str = "spladeray evaluation",
    show_progress: bool = False,
) -> EvalResults:
    """Run every system on every dataset; see the module docstring.

    ``systems`` are ``evaluate.systems`` entries (``EvalBM25Config``, ``EvalSparseConfig``, ...);
    ``encoders`` maps a sparse system's name to an already loaded :class:`SpladeEncoder` to use
    instead of its configured model. With ``runs_dir`` the runs are written as TREC files.
    """
    measures = list(measures)
    encoders = dict(encoders or {})
    per_dataset: dict[str, dict[str, SystemResult]] = {}
    infos = []
    for ds in datasets:
        data = ds if isinstance(ds, Dataset) else Dataset.load(ds)
        if data.name in per_dataset:
            data.name = f"{data.name}-{data.split}-{len(per_dataset)}"
        infos.append(data.info())
        logger.info(
            "dataset %s (%s): %d documents, %d queries",
            data.name,
            data.split,
            data.num_docs,
            len(data.queries),
        )
        results: dict[str, SystemResult] = {}
        for system in systems:
            if system.kind == "hybrid":
                parts = [results[name] for name in system.fuse]
                results[system.name] = _evaluate_hybrid(
                    system, parts, data, measures=measures, depth=depth
                )
            else:
                # one system at a time: built, measured, and freed before the next is built
                retriever = build_retriever(
                    system,
                    default_model=default_model,
                    encoder=encoders.get(system.name),
                    distributed=distributed,
                    ray_cfg=ray_cfg,
                    show_progress=show_progress,
                )
                try:
                    results[system.name] = evaluate_retriever(
                        retriever,
                        data,
                        measures=measures,
                        depth=depth,
                        latency_queries=latency_queries,
                    )
                finally:
                    retriever.close()
                    del retriever
                    gc.collect()
            if runs_dir is not None:
                write_trec_run(
                    results[system.name].run or {},
                    Path(runs_dir) / _file_name(data.name) / f"{_file_name(system.name)}.trec",
                    tag=system.name,
                )
        for r in results.values():  # runs are large; keep them only on disk
            r.run = None
        per_dataset[data.name] = results
    average = {
        s.name: _average(s.name, s.kind, [per_dataset[d][s.name] for d in per_dataset])
        for s in systems
    }
    return EvalResults(
        measures=measures,
        datasets=infos,
        systems=[describe(s, default_model) for s in systems],
        per_dataset=per_dataset,
        average=average,
        title=title,
    )


def dataset_configs(cfg: Config, evaluate: EvaluateConfig) -> list[EvalDatasetConfig]:
    """``evaluate.datasets``, or the top-level ``data`` section when that list is empty."""
    if evaluate.datasets:
        return list(evaluate.datasets)
    if cfg.data is None:
        raise ValueError(f"{cfg.source}: evaluate.datasets is empty and there is no data section")
    return [
        EvalDatasetConfig(
            beir_dir=cfg.data.beir_dir, split=cfg.data.split, corpus_limit=cfg.data.corpus_limit
        )
    ]


def run_evaluation(
    cfg: Config,
    *,
    evaluate: EvaluateConfig | None = None,
    systems: Sequence | None = None,
    encoders: Mapping[str, Any] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    echo: bool = True,
    show_progress: bool = True,
) -> EvalResults:
    """Evaluate as ``cfg.evaluate`` says, write the reports, print the table.

    ``systems`` replaces ``evaluate.systems`` (e.g. the demo's before/after pair) and
    ``encoders`` supplies loaded sparse encoders by system name. Returns the results, with
    ``results.paths`` naming the files written (``json``, ``markdown``, ``chart``, ``runs``):
    local paths, or URIs when ``output_dir`` (else ``evaluate.output_dir``) is a URI.
    """
    from spladeray.eval.report import write_reports

    evaluate = evaluate or cfg.evaluate or EvaluateConfig()
    if systems is not None:
        evaluate = EvaluateConfig.model_validate(
            {**evaluate.model_dump(exclude={"systems"}), "systems": list(systems)}
        )
    uri = os.fspath(output_dir or evaluate.output_dir)
    remote = storage.is_remote(uri)
    if remote:
        storage.preflight(write=[uri])
    with storage.staged_dir(uri) as out:  # uploaded to a remote uri when the block ends
        results = evaluate_systems(
            dataset_configs(cfg, evaluate),
            evaluate.systems,
            default_model=cfg.model,
            encoders=encoders,
            measures=evaluate.measures,
            depth=evaluate.depth,
            latency_queries=evaluate.latency_queries,
            distributed=evaluate,
            ray_cfg=cfg.ray,
            runs_dir=out / "runs",
            title=evaluate.title or f"{cfg.run_name}: evaluation",
            show_progress=show_progress,
        )
        results.paths = write_reports(results, out, chart=evaluate.chart)
        results.paths["runs"] = str(out / "runs")
        if remote:  # held back from the upload: written last, it marks the evaluation complete
            summary = (out / "results.json").read_bytes()
            (out / "results.json").unlink()
    if remote:
        storage.write_bytes(storage.join(uri, "results.json"), summary)
        results.paths = {
            kind: storage.join(uri, Path(path).relative_to(out).as_posix())
            for kind, path in results.paths.items()
        }
    if echo:
        print()
        print(results.markdown())
        for kind, path in results.paths.items():
            print(f"{kind}: {path}")
    return results
