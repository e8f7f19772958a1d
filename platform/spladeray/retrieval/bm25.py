"""BM25 with ``bm25s`` (Lucene variant) and PyStemmer: the one lexical retriever.

Text analysis: ``bm25s.tokenize`` (lower-cased word tokens), a stopword list (bm25s names it:
``en``, ``de``, ``fr``, ...; ``None`` keeps every word) and a Snowball stemmer (PyStemmer
algorithm: ``english``, ``german``, ...; ``None``: no stemming). :meth:`BM25Retriever.for_language`
picks both from one language name. Query terms absent from the corpus are dropped, and hits with
score 0 (no term in common) are never returned.

With English stopwords and stemming, SciFact's BEIR test split gives nDCG@10 0.686, the figure
the BEIR literature reports for BM25. The "active dimensions" of a text are its distinct analysed
terms found in the corpus vocabulary, so BM25 sits on the same sparsity charts as learned models.

An index can be saved and loaded memory-mapped (``save(dir)`` / ``BM25Retriever.load(dir)``):
negative mining builds it once and every miner actor maps the same files. The analysis settings
travel with it (``analysis.json``); the ids do not (a loaded index answers ``search_rows``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from spladeray.retrieval.base import Retriever, RowHits

ANALYSIS_FILE = "analysis.json"
BM25S_TOPK_MAX_DOCS = 50_000
"""Up to this many documents :meth:`BM25Retriever.mine_rows` is ``bm25s.retrieve`` itself (an
N-length pass per query is cheap there), so small corpora (SciFact) keep bm25s's exact order
among equal scores; above it, MaxScore over postings, with equal scores ordered by row."""


def _has_stopwords(language: str) -> bool:
    """Whether bm25s has a stopword list under this name."""
    import bm25s

    try:
        bm25s.tokenize(["a"], stopwords=language, show_progress=False)
    except ValueError:
        return False
    return True


def _top(rows: np.ndarray, scores: np.ndarray | None, k: int) -> RowHits:
    """The ``k`` best ``(rows, scores)`` with a score > 0, best first, equal scores by row."""
    if scores is None or k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    if rows.size > k:  # every document scoring at least the k-th (ties included)
        keep = scores >= np.partition(scores, rows.size - k)[rows.size - k]
        rows, scores = rows[keep], scores[keep]
    best = np.lexsort((rows, -scores))[:k]
    best = best[scores[best] > 0]
    return rows[best], scores[best].astype(np.float32)


class BM25Retriever(Retriever):
    """``index(ids, texts)`` then ``search(queries, k)``; see the module docstring."""

    kind = "bm25"

    def __init__(
        self,
        name: str = "bm25",
        *,
        k1: float = 1.5,
        b: float = 0.75,
        stemmer: str | None = "english",
        stopwords: str | None = "en",
    ) -> None:
        super().__init__(name)
        self.k1, self.b = k1, b
        self.stemmer_name, self.stopwords = stemmer, stopwords
        self._stemmer = None
        if stemmer:
            import Stemmer

            self._stemmer = Stemmer.Stemmer(stemmer)
        self.model = None  # bm25s.BM25 once a corpus is indexed or loaded

    @classmethod
    def for_language(cls, language: str | None, name: str = "bm25", **kwargs) -> BM25Retriever:
        """Stemmer and stopwords of one language (``english``, ``german``, ...), where known.

        ``None`` analyses without stemming or stopwords. A language PyStemmer does not know gets
        no stemming; one bm25s has no stopword list for keeps every word.
        """
        import Stemmer

        stemmer = language if language in Stemmer.algorithms() else None
        stopwords = language if language and _has_stopwords(language) else None
        return cls(name, stemmer=stemmer, stopwords=stopwords, **kwargs)

    @classmethod
    def from_config(cls, cfg) -> BM25Retriever:
        """From an ``EvalBM25Config`` (``name``, ``k1``, ``b``, ``stemmer``, ``stopwords``)."""
        return cls(cfg.name, k1=cfg.k1, b=cfg.b, stemmer=cfg.stemmer, stopwords=cfg.stopwords)

    # ------------------------------------------------------------------ analysis
    def _tokenize(self, texts: Sequence[str], return_ids: bool):
        import bm25s

        return bm25s.tokenize(
            list(texts),
            stopwords=self.stopwords,
            stemmer=self._stemmer,
            return_ids=return_ids,
            show_progress=False,
        )

    def _known_terms(self, queries: Sequence[str]) -> list[list[str]]:
        vocab = self._model().vocab_dict
        return [[t for t in q if t in vocab] for q in self._tokenize(queries, return_ids=False)]

    def _model(self):
        if self.model is None:
            raise RuntimeError(f"{self.name}: index or load a corpus first")
        return self.model

    # ------------------------------------------------------------------ building
    def encode_documents(self, texts: list[str]):
        import bm25s

        self.model = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        self.model.index(self._tokenize(texts, return_ids=True), show_progress=False)
        return None  # the term matrix is read from the index when asked (doc_matrix)

    @property
    def doc_matrix(self) -> sp.csr_matrix | None:
        """Documents x terms presence matrix (1 where the term occurs), from the index."""
        if self.model is None:
            return None
        s = self.model.scores  # CSC over (documents, vocabulary): one entry per occurrence
        cols = np.asarray(s["indptr"]).size - 1
        ones = np.ones(np.asarray(s["indices"]).size, dtype=np.float32)
        presence = sp.csc_matrix((ones, s["indices"], s["indptr"]), (int(s["num_docs"]), cols))
        return presence.tocsr()

    @property
    def num_docs(self) -> int:
        return int(self.model.scores["num_docs"]) if self.model is not None else 0

    def save(self, directory: str | Path) -> None:
        """Write the index and its analysis settings to ``directory`` (not the ids)."""
        directory = Path(directory)
        self._model().save(str(directory), show_progress=False)
        settings = {"stemmer": self.stemmer_name, "stopwords": self.stopwords}
        (directory / ANALYSIS_FILE).write_text(json.dumps(settings))

    @classmethod
    def load(
        cls, directory: str | Path, *, ids: Sequence[str] | None = None, mmap: bool = True
    ) -> BM25Retriever:
        """An index :meth:`save` wrote; memory-mapped by default (shared by the processes of a
        node through the page cache). Without ``ids`` it answers ``search_rows`` only."""
        import bm25s

        directory = Path(directory)
        settings = json.loads((directory / ANALYSIS_FILE).read_text())
        model = bm25s.BM25.load(str(directory), mmap=mmap, show_progress=False)
        retriever = cls(
            k1=model.k1, b=model.b, stemmer=settings["stemmer"], stopwords=settings["stopwords"]
        )
        retriever.model = model
        retriever.ids = list(ids) if ids is not None else None
        return retriever

    # ------------------------------------------------------------------ searching
    def search_rows(self, queries: Sequence[str], k: int) -> list[RowHits]:
        model = self._model()
        terms = self._known_terms(queries)
        empty = (np.zeros(0, np.int64), np.zeros(0, np.float32))
        out: list[RowHits] = [empty for _ in terms]
        asked = [i for i, t in enumerate(terms) if t]
        k = min(k, self.num_docs)
        if not asked or k <= 0:
            return out
        rows, scores = model.retrieve(
            [terms[i] for i in asked], k=k, show_progress=False, n_threads=1
        )
        for i, r, s in zip(asked, rows, scores, strict=True):
            keep = s > 0
            out[i] = (np.asarray(r[keep], dtype=np.int64), np.asarray(s[keep], dtype=np.float32))
        return out

    # ------------------------------------------------------------------ mining (exact top-k)
    # bm25s.retrieve allocates, fills with np.add.at and argpartitions an N-length score vector
    # per query, in Python (6.0 ms per query at 100k synthetic documents, bench/prepare_scale.py),
    # and get_scores does the same again for the teacher. mine_rows multiplies a batch of queries
    # by bm25s's own term -> document score matrix (scipy's sparse product, in C++): the work is
    # the postings of the queries' terms, and the float32 sums are added in query-token order
    # exactly as bm25s adds them, so every score is bit-equal to bm25s's.
    MINE_BATCH = 16  # queries per sparse product (its output: their touched documents)

    def _token_ids(self, queries: Sequence[str]) -> list[np.ndarray]:
        """Each query's known term ids, in query order, repeats kept (as bm25s scores them)."""
        vocab = self._model().vocab_dict
        return [
            np.asarray([vocab[t] for t in q], dtype=np.int64) for q in self._known_terms(queries)
        ]

    def _score_matrix(self, tokens: list[np.ndarray]) -> sp.csr_matrix:
        """Queries x documents bm25s scores (the touched documents only)."""
        s = self._model().scores
        indices, indptr = s["indices"], s["indptr"]
        terms = np.unique(np.concatenate(tokens)) if tokens else np.zeros(0, np.int64)
        spans = [(int(indptr[t]), int(indptr[t + 1])) for t in terms]
        postings = sp.csr_matrix(  # the queries' terms' rows of the term x document matrix
            (
                np.concatenate([s["data"][a:b] for a, b in spans] or [np.zeros(0, np.float32)]),
                np.concatenate([indices[a:b] for a, b in spans] or [np.zeros(0, np.int32)]),
                np.concatenate([[0], np.cumsum([b - a for a, b in spans], dtype=np.int64)]),
            ),
            shape=(terms.size, self.num_docs),
        )
        # one entry per query token, repeats not merged: the product adds them in this order
        cols = np.searchsorted(terms, np.concatenate(tokens)) if terms.size else np.zeros(0)
        rows_ptr = np.concatenate([[0], np.cumsum([t.size for t in tokens])])
        ones = np.ones(cols.size, dtype=postings.dtype)
        queries = sp.csr_matrix((ones, cols, rows_ptr), shape=(len(tokens), terms.size))
        return queries @ postings

    def mine_rows(self, queries: Sequence[str], k: int) -> list[RowHits]:
        """The top ``k`` documents with a score > 0 of each query, exactly, best first; scores
        bit-equal to bm25s's. Up to :data:`BM25S_TOPK_MAX_DOCS` documents this is
        :meth:`search_rows` (bm25s's own order among equal scores); above, the batched sparse
        product (see the comment above), equal scores ordered by row."""
        if self.num_docs <= BM25S_TOPK_MAX_DOCS:
            return self.search_rows(queries, k)
        tokens = self._token_ids(queries)
        out: list[RowHits] = []
        for start in range(0, len(tokens), self.MINE_BATCH):
            scores = self._score_matrix(tokens[start : start + self.MINE_BATCH])
            for n in range(scores.shape[0]):
                cut = slice(scores.indptr[n], scores.indptr[n + 1])
                out.append(_top(scores.indices[cut].astype(np.int64), scores.data[cut], k))
        return out

    def _lookup(self, term: int, rows: np.ndarray) -> np.ndarray:
        """Term ``term``'s bm25s score (float32) in each of ``rows`` (0 where absent)."""
        s = self._model().scores
        start, end = int(s["indptr"][term]), int(s["indptr"][term + 1])
        out = np.zeros(rows.size, dtype=np.float32)
        if end > start and rows.size:
            posting = np.asarray(s["indices"][start:end])  # sorted by row (keys need not be)
            pos = np.minimum(np.searchsorted(posting, rows.astype(posting.dtype)), end - start - 1)
            hit = posting[pos] == rows
            out[hit] = np.asarray(s["data"][start:end])[pos[hit]]
        return out

    def score_rows(self, queries: Sequence[str], rows: Sequence[Sequence[int]]) -> list:
        """BM25 scores of chosen documents: for query ``i``, one float32 per row in ``rows[i]``
        (0 where the document shares no term), whether or not it is in the query's top hits;
        bit-equal to bm25s's ``get_scores`` (float32 sums in query-token order). A binary search
        per (row, query token), no N-length pass."""
        out = []
        for tokens, r in zip(self._token_ids(queries), rows, strict=True):
            r = np.asarray(r, dtype=np.int64)
            acc = np.zeros(r.size, dtype=np.float32)
            for t in tokens:  # + 0.0 where absent: exact
                acc += self._lookup(int(t), r)
            out.append(acc)
        return out

    def query_matrix(self, queries: Sequence[str]) -> sp.csr_matrix:
        """Queries x terms presence matrix, in the column space of :attr:`doc_matrix`."""
        vocab = self._model().vocab_dict
        width = np.asarray(self.model.scores["indptr"]).size - 1
        indptr, cols = [0], []
        for q in self._known_terms(queries):
            uniq = np.unique(np.asarray([vocab[t] for t in q], dtype=np.int64))
            cols.append(uniq)
            indptr.append(indptr[-1] + uniq.size)
        indices = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
        data = np.ones(indices.size, dtype=np.float32)
        return sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, width))
