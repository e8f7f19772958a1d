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


def _has_stopwords(language: str) -> bool:
    """Whether bm25s has a stopword list under this name."""
    import bm25s

    try:
        bm25s.tokenize(["a"], stopwords=language, show_progress=False)
    except ValueError:
        return False
    return True


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

    def score_rows(self, queries: Sequence[str], rows: Sequence[Sequence[int]]) -> list:
        """BM25 scores of chosen documents: for query ``i``, one float32 per row in ``rows[i]``
        (0 where the document shares no term), whether or not it is in the query's top hits.
        One ``bm25s`` score pass over the index per distinct query."""
        model = self._model()
        terms = self._known_terms(queries)
        cache: dict[str, np.ndarray] = {}
        out = []
        for q, t, r in zip(queries, terms, rows, strict=True):
            if not t:
                out.append(np.zeros(len(r), dtype=np.float32))
                continue
            if q not in cache:
                cache[q] = np.asarray(model.get_scores(t), dtype=np.float32)
            out.append(cache[q][np.asarray(r, dtype=np.int64)])
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
