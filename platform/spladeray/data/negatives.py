"""Hard-negative mining: retrieve the top ``depth`` documents of each query, drop its positives.

For a query with positives ``P`` and ranked hits ``h_1, h_2, ...`` (best first)::

    candidates = [h for h in hits if h not in P]          # never a positive of the query
    negatives  = given + candidates[skip_top:]            # skip_top: likely false negatives
    negatives  = dedup(negatives)[:num_negatives]

``given`` are negatives the source already had (pair files); BM25 hits with score 0 (no query
term in common) are not candidates. Retrievers, all over the :class:`DocStore` row order:

- ``bm25``: bm25s with PyStemmer stemming and English stopwords. The index is built once, in one
  process (the only place the whole corpus is needed: tokens + a sparse doc-term matrix, about
  12 bytes per (doc, distinct term); MS MARCO's 8.8M passages need some 4-6 GB), saved, and
  memory-mapped by every miner actor.
- ``sparse``: a :class:`SpladeEncoder` over the corpus (Ray Data actor pool), dot product; the
  CSR matrix (8 bytes per non-zero) is loaded by each miner actor.
- ``dense``: a sentence-transformers model, cosine; a float32 ``[docs, dim]`` ``.npy``,
  memory-mapped by the miner actors (MS MARCO with 384 dims: 13.5 GB on disk).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from spladeray.data.docstore import DocStore

STR_LIST = pa.list_(pa.string())
DOC_CHUNK = 262_144


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


# ---------------------------------------------------------------------------- BM25
def _bm25_tokenize(texts: list[str], stemmer: str | None, stopwords: str | None, **kwargs):
    import bm25s
    import Stemmer

    stem = Stemmer.Stemmer(stemmer) if stemmer else None
    return bm25s.tokenize(texts, stopwords=stopwords, stemmer=stem, show_progress=False, **kwargs)


def build_bm25(store_path: str | Path, index_dir: str | Path, stemmer: str | None, stopwords):
    """Index every document of the store (row order) with bm25s and save it to ``index_dir``."""
    import bm25s

    store = DocStore(store_path)
    texts = store.table.column("text").to_pylist()
    retriever = bm25s.BM25()
    retriever.index(_bm25_tokenize(texts, stemmer, stopwords), show_progress=False)
    retriever.save(str(index_dir))
    return {"docs": len(texts)}


class BM25Retriever:
    def __init__(self, index_dir: str | Path, stemmer: str | None, stopwords: str | None):
        import bm25s

        self.index = bm25s.BM25.load(str(index_dir), mmap=True)
        self.stemmer, self.stopwords = stemmer, stopwords
        self.n_docs = int(self.index.scores["num_docs"])

    def search(self, queries: list[str], k: int) -> list[list[int]]:
        tokens = _bm25_tokenize(queries, self.stemmer, self.stopwords, return_ids=False)
        k = min(k, self.n_docs)
        rows, scores = self.index.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return [
            [int(r) for r, s in zip(rr, ss, strict=True) if s > 0]
            for rr, ss in zip(rows, scores, strict=True)
        ]


# ---------------------------------------------------------------------------- model retrievers
def _topk(score_chunk, n_docs: int, n_queries: int, k: int) -> list[list[int]]:
    """Best ``k`` rows per query over doc chunks; ``score_chunk(start, stop) -> [q, stop-start]``."""
    k = min(k, n_docs)
    best_s = np.full((n_queries, 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((n_queries, 0), dtype=np.int64)
    for start in range(0, n_docs, DOC_CHUNK):
        stop = min(start + DOC_CHUNK, n_docs)
        scores = np.hstack([best_s, np.asarray(score_chunk(start, stop), dtype=np.float32)])
        index = np.hstack([best_i, np.arange(start, stop)[None, :].repeat(n_queries, 0)])
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k] if scores.shape[1] > k else None
        if keep is not None:
            scores = np.take_along_axis(scores, keep, 1)
            index = np.take_along_axis(index, keep, 1)
        best_s, best_i = scores, index
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_i, order, 1).tolist()


class DenseRetriever:
    def __init__(self, index_dir: str | Path, model: str, batch_size: int):
        from spladeray.data.teachers import DenseTeacher

        self.encoder = DenseTeacher(model, batch_size=batch_size)
        self.matrix = np.load(Path(index_dir) / "dense.npy", mmap_mode="r")

    def search(self, queries: list[str], k: int) -> list[list[int]]:
        q = self.encoder.encode(queries, "query", normalize=True)
        return _topk(lambda a, b: q @ self.matrix[a:b].T, len(self.matrix), len(q), k)


class SparseRetriever:
    def __init__(self, index_dir: str | Path, model: str, batch_size: int):
        import scipy.sparse as sp

        from spladeray.data.teachers import SparseTeacher

        self.encoder = SparseTeacher(model, batch_size=batch_size)
        m = sp.load_npz(Path(index_dir) / "sparse.npz").tocsr()
        vocab = self.encoder.encoder.vocab_size  # the saved matrix is as wide as its max token
        self.matrix = sp.csr_matrix((m.data, m.indices, m.indptr), shape=(m.shape[0], vocab))

    def search(self, queries: list[str], k: int) -> list[list[int]]:
        q = self.encoder.encode(queries, "query")
        chunk = lambda a, b: (q @ self.matrix[a:b].T).toarray()  # noqa: E731
        return _topk(chunk, self.matrix.shape[0], q.shape[0], k)


class CorpusEncoder:
    """Ray Data actor: ``(row, text)`` batches -> ``row`` + one encoded vector per document."""

    def __init__(self, method: str, model: str, batch_size: int):
        from spladeray.data.teachers import DenseTeacher, SparseTeacher

        self.method = method
        cls = DenseTeacher if method == "dense" else SparseTeacher
        self.encoder = cls(model, batch_size=batch_size)

    def __call__(self, batch: dict) -> dict:
        texts = list(batch["text"])
        if self.method == "dense":
            vectors = list(self.encoder.encode(texts, "document", normalize=True))
        else:
            m = self.encoder.encode(texts, "document").tocsr()
            vectors = [m.indices[m.indptr[i] : m.indptr[i + 1]] for i in range(m.shape[0])]
            weights = [m.data[m.indptr[i] : m.indptr[i + 1]] for i in range(m.shape[0])]
            return {"row": batch["row"], "indices": vectors, "weights": weights}
        return {"row": batch["row"], "vector": vectors}


def build_model_index(method, store_path, index_dir, model, batch_size, actors, num_cpus):
    """Encode the corpus with an actor pool and save ``dense.npy`` or ``sparse.npz``."""
    import ray.data
    import scipy.sparse as sp

    store = DocStore(store_path)
    table = store.table.select(["text"]).append_column("row", pa.array(np.arange(len(store))))
    blocks = [table.slice(s, 256) for s in range(0, len(store), 256)]
    ds = ray.data.from_arrow(blocks).map_batches(
        CorpusEncoder,
        fn_constructor_kwargs={"method": method, "model": model, "batch_size": batch_size},
        concurrency=actors,
        num_cpus=num_cpus,
        batch_size=None,
        batch_format="numpy",
    )
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    parts: dict[int, tuple] = {}
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        cols = ("vector",) if method == "dense" else ("indices", "weights")
        for i, row in enumerate(batch["row"]):
            parts[int(row)] = tuple(batch[c][i] for c in cols)
    rows = [parts[i] for i in range(len(store))]
    if method == "dense":
        np.save(index_dir / "dense.npy", np.stack([r[0] for r in rows]).astype(np.float32))
    else:
        indptr = np.cumsum([0] + [len(r[0]) for r in rows])
        indices = np.concatenate([r[0] for r in rows]).astype(np.int32)
        data = np.concatenate([r[1] for r in rows]).astype(np.float32)
        vocab = int(indices.max()) + 1 if indices.size else 1
        sp.save_npz(
            index_dir / "sparse.npz", sp.csr_matrix((data, indices, indptr), (len(rows), vocab))
        )
    return {"docs": len(rows)}


# ---------------------------------------------------------------------------- the actor
class NegativeMiner:
    """Ray Data actor: adds ``negative_ids`` and ``negatives`` (texts) to a batch of pairs.

    Input columns: ``query``, ``query_positive_ids`` (all positives of the query) and
    ``given_negative_ids`` (possibly empty). ``method="none"`` keeps only the given negatives.
    """

    def __init__(self, work_dir: str, cfg: dict, stats=None):
        self.cfg, self.stats = cfg, stats
        self.store = DocStore(Path(work_dir) / "corpus.arrow")
        index_dir = Path(work_dir) / "index"
        method = cfg["method"]
        if method == "bm25":
            self.retriever = BM25Retriever(index_dir, cfg["stemmer"], cfg["stopwords"])
        elif method == "dense":
            self.retriever = DenseRetriever(index_dir, cfg["model"], cfg["batch_size"])
        elif method == "sparse":
            self.retriever = SparseRetriever(index_dir, cfg["model"], cfg["batch_size"])
        else:
            self.retriever = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        start = time.perf_counter()
        queries = batch.column("query").to_pylist()
        positives = batch.column("query_positive_ids").to_pylist()
        given = batch.column("given_negative_ids").to_pylist()
        ranked: list[list[str]] = [[] for _ in queries]
        if self.retriever is not None:
            unique = list(dict.fromkeys(queries))
            hits = self.retriever.search(unique, self.cfg["depth"])
            by_query = {q: self.store.ids_at(h) for q, h in zip(unique, hits, strict=True)}
            ranked = [by_query[q] for q in queries]
        n, skip = self.cfg["num_negatives"], self.cfg["skip_top"]
        ids = [
            select_negatives(r, p, n, skip, g)
            for r, p, g in zip(ranked, positives, given, strict=True)
        ]
        texts = [self.store.texts(row) for row in ids]
        out = batch.drop_columns(["given_negative_ids"])
        out = out.append_column("negative_ids", pa.array(ids, STR_LIST))
        out = out.append_column("negatives", pa.array(texts, STR_LIST))
        if self.stats is not None:
            from spladeray.data.stats import report

            short = sum(len(row) < n for row in ids)
            report(self.stats, "mine", len(queries), time.perf_counter() - start, short_rows=short)
        return out
