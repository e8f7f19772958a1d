"""BM25 over stored document texts with ``bm25s``: the lexical search of the embedded index.

Every ``bm25s`` / ``PyStemmer`` call of :mod:`spladeray.index` is in :class:`TextBM25`, so it can
be swapped for the project's shared BM25 retriever in one place. ``language`` picks the Snowball
stemmer (a ``PyStemmer`` algorithm such as ``english``, ``german``, ``french``) and the stopword
list of the same name when ``bm25s`` has one; ``None`` does neither.
"""

from __future__ import annotations

from collections.abc import Sequence


class TextBM25:
    """A BM25 index over ``texts`` (built once); :meth:`search` gives ``(row, score)`` pairs."""

    def __init__(self, texts: Sequence[str], language: str | None = "english") -> None:
        import bm25s
        import Stemmer

        self._bm25s = bm25s
        self.stemmer = Stemmer.Stemmer(language) if language else None
        self.stopwords = _stopwords(language)
        self.size = len(texts)
        tokens = bm25s.tokenize(
            list(texts), stopwords=self.stopwords, stemmer=self.stemmer, show_progress=False
        )
        self.vocab = dict(tokens.vocab)
        self.model = bm25s.BM25()
        if self.size:
            self.model.index(tokens, show_progress=False)

    def search(self, text: str, size: int) -> list[tuple[int, float]]:
        """The best ``size`` rows for ``text`` with a positive score, best first."""
        if not self.size or size <= 0:
            return []
        words = self._bm25s.tokenize(
            [text],
            stopwords=self.stopwords,
            stemmer=self.stemmer,
            return_ids=False,
            show_progress=False,
        )[0]
        known = [w for w in words if w in self.vocab]
        if not known:
            return []
        rows, scores = self.model.retrieve(
            [known], k=min(size, self.size), show_progress=False, n_threads=1
        )
        return [(int(r), float(s)) for r, s in zip(rows[0], scores[0], strict=True) if s > 0]


def _stopwords(language: str | None) -> str | None:
    """``language`` when bm25s has a stopword list of that name, else None (keep every word)."""
    if not language:
        return None
    import bm25s

    try:
        bm25s.tokenize(["a"], stopwords=language, show_progress=False)
    except ValueError:
        return None
    return language
