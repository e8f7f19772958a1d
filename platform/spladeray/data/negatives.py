"""Hard-negative mining: retrieve the top ``depth`` documents of each query, drop its positives.

For a query with positives ``P`` and ranked hits ``h_1, h_2, ...`` (best first)::

    candidates = [h for h in hits if h not in P]          # never a positive of the query
    negatives  = given + candidates[skip_top:]            # skip_top: likely false negatives
    negatives  = dedup(negatives)[:num_negatives]

``given`` are negatives the source already had (pair files); hits with score 0 (no term in
common) are not candidates. The retrievers are :mod:`spladeray.retrieval`'s, over the
:class:`DocStore` row order; each index is built once and saved, then loaded by every miner:

- ``bm25``: :class:`~spladeray.retrieval.BM25Retriever`, built in one process (the only place
  the whole corpus is needed: tokens + a sparse doc-term matrix, about 12 bytes per (doc,
  distinct term); MS MARCO's 8.8M passages need some 4-6 GB), memory-mapped by the miners.
- ``sparse``: a :class:`SpladeEncoder` over the corpus (the one corpus encoder's actor pool,
  :mod:`spladeray.index.encoding`), exact dot product; the CSR matrix (8 bytes per non-zero) is loaded by each miner.
- ``dense``: a sentence-transformers model, cosine; a float32 ``[docs, dim]`` ``.npy``,
  memory-mapped by the miners (MS MARCO with 384 dims: 13.5 GB on disk).

Models run on a GPU only when the actor holds one (``prepare.negatives.num_gpus``); ``auto``
devices are resolved with :func:`spladeray.raycluster.resolve_device`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from spladeray import storage
from spladeray.config import NegativesConfig
from spladeray.data.docstore import DocStore

STR_LIST = pa.list_(pa.string())


def select_negatives(
    ranked_ids: Iterable[str],
    positives: Iterable[str],
    num_negatives: int,
    skip_top: int = 0,
    given: Sequence[str] = (),
) -> list[str]:
    """The formula in the module docstring: given first, then ranked non-positives after skip."""
    positives = set(positives)
    candidates = [d for d in ranked_ids if d not in positives][skip_top:]
    out: list[str] = []
    seen: set[str] = set()
    for doc_id in [*given, *candidates]:
        if doc_id not in positives and doc_id not in seen:
            seen.add(doc_id)
            out.append(doc_id)
        if len(out) >= num_negatives:
            break
    return out


# ---------------------------------------------------------------------------- models
def _dense_model(model: str, batch_size: int):
    from spladeray.data.teachers import resolve_model_path
    from spladeray.retrieval import DenseModel

    return DenseModel(resolve_model_path(model), batch_size=batch_size, normalize=True)


def _sparse_encoder(model: str, batch_size: int):
    from spladeray.data.teachers import resolve_model_path
    from spladeray.model import load_encoder
    from spladeray.raycluster import resolve_device

    device = str(resolve_device("auto"))
    return load_encoder(resolve_model_path(model), batch_size=batch_size, device=device)


def load_retriever(method: str, index_dir: str | Path, model: str | None, batch_size: int):
    """The saved mining index of ``method`` (``bm25``, ``dense``, ``sparse``), rows only."""
    from spladeray.retrieval import BM25Retriever, DenseRetriever, SparseRetriever

    if method == "bm25":
        return BM25Retriever.load(index_dir, mmap=True)
    if method == "dense":
        return DenseRetriever.load(index_dir, _dense_model(model, batch_size))
    if method == "sparse":
        return SparseRetriever.load(index_dir, _sparse_encoder(model, batch_size))
    raise ValueError(f"no mining index for method {method!r}")


# ---------------------------------------------------------------------------- building
def build_bm25(store_path: str | Path, index_dir: str | Path, stemmer: str | None, stopwords):
    """Index every document of the store (row order) with bm25s and save it to ``index_dir``.

    Both may be URIs (``s3://.../_work/corpus.arrow``): this runs as a Ray task on any node, so
    it reads the store through the node's cache and uploads the index it built.
    """
    from spladeray.retrieval import BM25Retriever

    store = DocStore(storage.local_copy(store_path))
    texts = store.table.column("text").to_pylist()
    retriever = BM25Retriever(stemmer=stemmer, stopwords=stopwords).index(None, texts)
    with storage.staged_dir(index_dir) as local:
        retriever.save(local)
    return {"docs": len(texts)}


def build_model_index(
    method, store_path, index_dir, model, batch_size, actors, num_cpus, num_gpus: float = 0.0
):
    """Encode the corpus with the one corpus encoder's actor pool
    (:func:`spladeray.index.encoding.encode_dataset`) and save ``dense.npz`` or ``sparse.npz``.

    The matrix is put together here because every miner loads it whole (see the module
    docstring for its bytes per document).
    """
    import functools

    import ray.data

    from spladeray.index.encoding import collect, encode_dataset
    from spladeray.retrieval import DenseRetriever, SparseRetriever

    store = DocStore(store_path)
    table = store.table.select(["text"]).append_column("row", pa.array(np.arange(len(store))))
    blocks = [table.slice(s, 256) for s in range(0, len(store), 256)]
    build = _dense_model if method == "dense" else _sparse_encoder
    encoded = encode_dataset(
        ray.data.from_arrow(blocks),
        functools.partial(build, model, batch_size),
        "dense" if method == "dense" else "sparse",
        num_actors=actors,
        batch_size=256,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )
    matrix = collect(encoded, len(store), "dense" if method == "dense" else "sparse")
    if method == "dense":
        DenseRetriever.save_matrix(index_dir, matrix.astype(np.float32))
    else:
        SparseRetriever.save_matrix(index_dir, matrix)
    return {"docs": len(store)}


# ---------------------------------------------------------------------------- the actor
class NegativeMiner:
    """Ray Data actor: adds ``negative_ids`` and ``negatives`` (texts) to a batch of pairs.

    Input columns: ``query``, ``query_positive_ids`` (all positives of the query),
    ``given_negative_ids`` (possibly empty) and the doc store rows ``positive_row`` and
    ``given_negative_rows``: the miner reads texts and scores by row and holds no ``id -> row``
    dict of the corpus (only of the documents in its batch). ``method="none"`` keeps only the given negatives.
    ``cfg`` is the typed :class:`NegativesConfig`.

    ``score_columns`` (BM25 teachers, ``kind: bm25``): for each, ``score_<name>`` holds the BM25
    score of ``[positive, *negatives]`` from the mining index itself (the positive's too, even
    when it is not among the top ``depth`` hits), so BM25 joins the ensemble at no model cost.
    """

    def __init__(
        self, work_dir: str, cfg: NegativesConfig, stats=None, score_columns: Sequence[str] = ()
    ):
        self.cfg, self.stats = cfg, stats
        self.score_columns = list(score_columns)
        if self.score_columns and cfg.method != "bm25":
            raise ValueError("BM25 teacher scores need negatives.method bm25")
        work = storage.local_copy(work_dir)  # a URI: fetched once per node into its cache
        self.store = DocStore(work / "corpus.arrow")
        self.retriever = None
        if cfg.method != "none":
            index_dir = work / "index"
            self.retriever = load_retriever(cfg.method, index_dir, cfg.model, cfg.batch_size)

    def __call__(self, batch: pa.Table) -> pa.Table:
        start = time.perf_counter()
        queries = batch.column("query").to_pylist()
        positives = batch.column("query_positive_ids").to_pylist()
        given = batch.column("given_negative_ids").to_pylist()
        ranked: list[list[str]] = [[] for _ in queries]
        row_of: dict[str, int] = {}  # this batch's documents (hits, given negatives) -> rows
        for ids, rows in zip(given, batch.column("given_negative_rows").to_pylist(), strict=True):
            row_of.update(zip(ids, rows, strict=True))
        if self.retriever is not None:
            unique = list(dict.fromkeys(queries))
            # BM25: an exact top-k over postings (mine_rows), not an N-length pass per query
            search = getattr(self.retriever, "mine_rows", self.retriever.search_rows)
            hits = search(unique, self.cfg.depth)
            by_query = {}
            for q, (rows, _) in zip(unique, hits, strict=True):
                ids = self.store.ids_at(rows.tolist())
                row_of.update(zip(ids, rows.tolist(), strict=True))
                by_query[q] = ids
            ranked = [by_query[q] for q in queries]
        n, skip = self.cfg.num_negatives, self.cfg.skip_top
        ids = [
            select_negatives(r, p, n, skip, g)
            for r, p, g in zip(ranked, positives, given, strict=True)
        ]
        rows = [[row_of[d] for d in row] for row in ids]
        texts = [self.store.texts_at(r) for r in rows]
        out = batch.drop_columns(["given_negative_ids", "given_negative_rows", "positive_row"])
        out = out.append_column("negative_ids", pa.array(ids, STR_LIST))
        out = out.append_column("negatives", pa.array(texts, STR_LIST))
        if self.score_columns:
            from spladeray.data.schema import SCORE_TYPE

            pos = batch.column("positive_row").to_pylist()
            chosen = [[p, *r] for p, r in zip(pos, rows, strict=True)]
            scores = pa.array(self.retriever.score_rows(queries, chosen), SCORE_TYPE)
            for column in self.score_columns:
                out = out.append_column(column, scores)
        if self.stats is not None:
            from spladeray.data.stats import report

            short = sum(len(row) < n for row in ids)
            report(self.stats, "mine", len(queries), time.perf_counter() - start, short_rows=short)
        return out
