"""The one set of retrievers (spladeray.retrieval): BM25, sparse, dense, top-k, mining on them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from spladeray.retrieval import BM25Retriever, top_k
from spladeray.retrieval import base as retrieval_base

IDS = ["cats", "dogs", "cat-sat", "rain", "coffee"]
TEXTS = [
    "Cats are furry animals that purr",
    "Dogs bark loudly at the mailman",
    "The cat sat on the mat",
    "Rain clouds gather before the storm",
    "Brewing coffee with a french press",
]


# ----------------------------------------------------------------------------- top-k
def test_top_k_over_doc_chunks_matches_a_full_sort(monkeypatch):
    monkeypatch.setattr(retrieval_base, "DOC_CHUNK", 7)
    scores = np.random.default_rng(0).normal(size=(3, 50)).astype(np.float32)
    hits = top_k(lambda a, b: scores[:, a:b], 50, 3, 5)
    assert [rows.tolist() for rows, _ in hits] == np.argsort(-scores, axis=1)[:, :5].tolist()
    for (rows, got), row in zip(hits, scores, strict=True):
        assert got.tolist() == row[rows].tolist()


def test_top_k_orders_ties_by_row_and_can_drop_non_positive(monkeypatch):
    monkeypatch.setattr(retrieval_base, "DOC_CHUNK", 2)
    scores = np.array([[1.0, 2.0, 2.0, 0.0, 2.0, -1.0]], dtype=np.float32)
    ((rows, got),) = top_k(lambda a, b: scores[:, a:b], 6, 1, 4)
    assert rows.tolist() == [1, 2, 4, 0] and got.tolist() == [2.0, 2.0, 2.0, 1.0]
    ((rows, _),) = top_k(lambda a, b: scores[:, a:b], 6, 1, 10, positive_only=True)
    assert rows.tolist() == [1, 2, 4, 0]
    assert top_k(lambda a, b: scores[:, a:b], 0, 2, 3)[1][0].size == 0


# ----------------------------------------------------------------------------- BM25
def test_bm25_in_memory_search_one_text():
    """What the embedded index's text search needs: (ids, texts) in memory, one query, k hits."""
    bm25 = BM25Retriever().index(IDS, TEXTS)
    hits = bm25.search_one("a cat sitting", k=3)
    assert list(hits)[:2] == ["cat-sat", "cats"]  # stemming: cat/cats, sitting/sat do not meet
    assert all(score > 0 for score in hits.values())
    assert bm25.search_one("zebra", k=3) == {}  # no term in common: no hit with score 0
    assert bm25.search_one("the", k=3) == {}  # a stopword only
    assert len(bm25.search(["cat", "dog", "rain"], k=1)) == 3
    assert bm25.num_docs == 5


def test_bm25_language_parameter():
    german = BM25Retriever.for_language("german")
    assert (german.stemmer_name, german.stopwords) == ("german", "german")
    english = BM25Retriever.for_language("english")
    assert (english.stemmer_name, english.stopwords) == ("english", "english")
    finnish = BM25Retriever.for_language("finnish")  # a stemmer but no bm25s stopword list
    assert (finnish.stemmer_name, finnish.stopwords) == ("finnish", None)
    plain = BM25Retriever.for_language(None)
    assert (plain.stemmer_name, plain.stopwords) == (None, None)
    german.index(["h", "k"], ["Die Häuser sind groß", "Der Kater schläft"])
    assert list(german.search_one("das Haus", k=2)) == ["h"]  # Häuser -> haus
    assert german.search_one("die der", k=2) == {}  # German stopwords


def test_bm25_saved_and_memory_mapped_answers_the_same(tmp_path):
    built = BM25Retriever(stemmer="english", stopwords="en").index(None, TEXTS)
    built.save(tmp_path / "bm25")
    loaded = BM25Retriever.load(tmp_path / "bm25")
    assert (loaded.stemmer_name, loaded.stopwords) == ("english", "en")
    queries = ["furry cats", "coffee press", "storm"]
    for (r1, s1), (r2, s2) in zip(
        built.search_rows(queries, 3), loaded.search_rows(queries, 3), strict=True
    ):
        assert r1.tolist() == r2.tolist() and s1.tolist() == pytest.approx(s2.tolist())
    with pytest.raises(RuntimeError, match="ids"):
        loaded.search(queries)  # loaded without ids: rows only
    named = BM25Retriever.load(tmp_path / "bm25", ids=IDS)
    assert list(named.search_one("furry cats", 1)) == ["cats"]


def test_bm25_term_matrices_share_one_column_space():
    bm25 = BM25Retriever().index(IDS, TEXTS)
    docs, queries = bm25.doc_matrix, bm25.query_matrix(["cat mat", "zebra"])
    assert docs.shape[0] == 5 and docs.shape[1] == queries.shape[1]
    # "cat sat mat" (stopword "the" and "on" dropped): 3 distinct terms
    assert docs[2].nnz == 3
    assert queries[0].nnz == 2 and queries[1].nnz == 0
    assert (queries[0] @ docs[2].T).toarray()[0, 0] == 2  # both query terms occur in doc 2


# ----------------------------------------------------------------------------- sparse
def test_sparse_retriever_equals_the_embedded_index_exact_search(splade_tiny, tmp_path):
    from spladeray.index.local import LocalIndex
    from spladeray.model import SpladeEncoder
    from spladeray.retrieval import SparseRetriever

    encoder = SpladeEncoder.from_pretrained(str(splade_tiny))
    sparse = SparseRetriever(encoder).index(IDS, TEXTS)
    local = LocalIndex(tmp_path / "local")
    local.create("t")
    local.add("t", IDS, encoder.encode_documents(TEXTS))
    queries = ["cat on a mat", "weather storm", "espresso"]
    for query, got in zip(queries, sparse.search(queries, k=3), strict=True):
        want = local.search("t", encoder.encode_queries([query])[0], size=3)
        assert list(got) == [h.id for h in want]
        assert list(got.values()) == pytest.approx([h.score for h in want], rel=1e-5)
        assert all(s > 0 for s in got.values())
    # saved (as wide as its largest token) and loaded: widened to the vocabulary, same rows
    SparseRetriever.save_matrix(tmp_path / "idx", sparse.doc_matrix[:, :3000])
    loaded = SparseRetriever.load(tmp_path / "idx", encoder)
    assert loaded.doc_matrix.shape == (5, encoder.vocab_size)


# ----------------------------------------------------------------------------- dense
def test_dense_retriever_in_memory_and_memory_mapped(tmp_path):
    from spladeray.retrieval import DenseModel, DenseRetriever

    model = DenseModel(batch_size=8, device="cpu")  # the bundled all-MiniLM-L6-v2, offline
    dense = DenseRetriever(model).index(IDS, TEXTS)
    assert dense.doc_matrix.shape == (5, model.dimension)
    assert np.linalg.norm(dense.doc_matrix, axis=1) == pytest.approx(np.ones(5), abs=1e-5)
    hits = dense.search(["kitten", "espresso"], k=2)
    assert list(hits[0])[0] in {"cats", "cat-sat"} and list(hits[1])[0] == "coffee"
    DenseRetriever.save_matrix(tmp_path / "dense", dense.doc_matrix)
    loaded = DenseRetriever.load(tmp_path / "dense", model)
    assert isinstance(loaded.doc_matrix, np.memmap)
    ((rows, scores),) = loaded.search_rows(["espresso"], 2)
    assert [IDS[r] for r in rows] == list(hits[1])
    assert scores.tolist() == pytest.approx(list(hits[1].values()), abs=1e-6)


# ----------------------------------------------------------------------------- mining
def _pairs(queries: list[str], positives: list[list[str]]) -> pa.Table:
    return pa.table(
        {
            "query": queries,
            "query_positive_ids": positives,
            "given_negative_ids": [[] for _ in queries],
            "given_negative_rows": pa.array([[] for _ in queries], pa.list_(pa.int64())),
            "positive_row": [IDS.index(p[0]) for p in positives],
        }
    )


def test_negative_miner_takes_the_typed_config_section(tmp_path):
    """BM25 built once to disk, then a miner (as a Ray Data actor would) maps and mines it."""
    from spladeray.config import NegativesConfig
    from spladeray.data.docstore import DocStoreWriter
    from spladeray.data.negatives import NegativeMiner, build_bm25

    with DocStoreWriter(tmp_path / "corpus.arrow") as writer:
        writer.add(IDS, TEXTS)
    assert build_bm25(tmp_path / "corpus.arrow", tmp_path / "index", "english", "en") == {"docs": 5}
    neg = NegativesConfig(method="bm25", num_negatives=2)
    batch = _pairs(["cat on the mat", "zebra"], [["cat-sat"], ["rain"]])
    typed = NegativeMiner(str(tmp_path), neg)(batch)
    assert typed.column("negative_ids").to_pylist() == [["cats"], []]
    assert typed.column("negatives").to_pylist() == [[TEXTS[0]], []]


@pytest.mark.parametrize("direct_postings", [0, 1 << 24])  # pruned, then direct scoring
def test_sparse_top_k_equals_the_dense_product_with_pruning_masks_and_theta(
    direct_postings, monkeypatch
):
    """(<1 s) the one exact sparse top-k against ``D @ q`` on skewed random data."""
    import scipy.sparse as sp

    from spladeray.retrieval import topk
    from spladeray.retrieval.topk import Postings, sparse_top_k

    monkeypatch.setattr(topk, "_DIRECT_POSTINGS", direct_postings)

    rng = np.random.default_rng(3)
    n, vocab = 3000, 500
    p = 1.0 / np.arange(1, vocab + 1)
    cols = rng.choice(vocab, size=(n, 20), p=p / p.sum())
    weights = rng.random((n, 20)).astype(np.float32) / (1 + np.log1p(cols))  # idf-like
    docs = sp.csr_matrix((weights.ravel(), cols.ravel(), np.arange(0, 20 * n + 1, 20)), (n, vocab))
    docs.sum_duplicates()
    postings = Postings.from_csr(docs)
    live = rng.random(n) > 0.1
    for k in (1, 10, 100):
        for _ in range(10):
            q_cols = rng.choice(vocab, size=8, replace=False, p=p / p.sum())
            q_w = rng.random(8) + 0.05
            dense = docs[:, q_cols].toarray().astype(np.float64) @ q_w
            dense[~live] = 0
            want = np.lexsort((np.arange(n), -dense))[:k]
            want = want[dense[want] > 0]
            rows, scores = sparse_top_k(postings, q_cols, q_w, k, live=live)
            assert rows.tolist() == want.tolist()
            assert scores == pytest.approx(dense[want], rel=1e-6)
            if len(want) == k:  # a lower bound from elsewhere prunes nothing that reaches it
                theta = float(dense[want[-1]])
                again, _ = sparse_top_k(postings, q_cols, q_w, k, live=live, theta=theta)
                assert again.tolist() == want.tolist()


# ----------------------------------------------------------------------------- BM25 mining
def _tied_corpus(n: int = 400, seed: int = 0) -> tuple[list[str], list[str]]:
    """Short texts over a 30-word vocabulary: many documents share a score (ties), some words
    repeat in a query (bm25s adds a repeated term twice)."""
    rng = np.random.default_rng(seed)
    words = [f"w{chr(97 + i // 26)}{chr(97 + i % 26)}x" for i in range(30)]
    docs = [" ".join(rng.choice(words, rng.integers(3, 9))) for _ in range(n)]
    queries = [" ".join(rng.choice(words, rng.integers(1, 6))) for _ in range(40)]
    return docs, [*queries, "nothing known here", words[0] + " " + words[0]]


def test_bm25_mine_rows_is_exact_with_ties_by_row(monkeypatch, tmp_path):
    """The batched sparse-product top-k (used above BM25S_TOPK_MAX_DOCS documents) against
    bm25s's full score vector: the same scores bit for bit, best first, equal scores by row."""
    from spladeray.retrieval import bm25 as bm25_module

    docs, queries = _tied_corpus()
    BM25Retriever(stemmer=None, stopwords=None).index(None, docs).save(tmp_path / "bm25")
    bm25 = BM25Retriever.load(tmp_path / "bm25")  # memory-mapped, as the miners load it
    monkeypatch.setattr(bm25_module, "BM25S_TOPK_MAX_DOCS", 0)
    monkeypatch.setattr(BM25Retriever, "MINE_BATCH", 7)  # several batches, one partial
    hits = bm25.mine_rows(queries, 25)
    terms = bm25._known_terms(queries)
    ties = 0
    for q, (rows, scores) in zip(terms, hits, strict=True):
        full = np.asarray(bm25.model.get_scores(q), np.float32) if q else np.zeros(len(docs))
        want = np.lexsort((np.arange(full.size), -full))[:25]
        want = want[full[want] > 0]
        assert rows.tolist() == want.tolist()
        assert scores.dtype == np.float32 and scores.tobytes() == full[want].tobytes()
        ties += int(np.sum(scores[1:] == scores[:-1]))
    assert ties > 50  # the corpus does exercise the tie order
    assert hits[-2][0].size == 0  # no known term: no hit
    # small corpora keep bm25s's own search (and so its order among equal scores)
    monkeypatch.setattr(bm25_module, "BM25S_TOPK_MAX_DOCS", 10_000)
    for got, want in zip(bm25.mine_rows(queries, 25), bm25.search_rows(queries, 25), strict=True):
        assert got[0].tolist() == want[0].tolist()


def test_bm25_score_rows_equals_bm25s_get_scores(tmp_path):
    """The teacher's scores by binary search: bit-equal to bm25s's N-length get_scores."""
    docs, queries = _tied_corpus(seed=1)
    bm25 = BM25Retriever(stemmer=None, stopwords=None).index(None, docs)
    rng = np.random.default_rng(2)
    rows = [rng.integers(0, len(docs), 9).tolist() for _ in queries]
    for q, r, got in zip(
        bm25._known_terms(queries), rows, bm25.score_rows(queries, rows), strict=True
    ):
        full = np.asarray(bm25.model.get_scores(q), np.float32) if q else np.zeros(len(docs))
        assert got.dtype == np.float32 and got.tobytes() == full[r].astype(np.float32).tobytes()
