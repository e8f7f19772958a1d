"""The embedded index: add, overwrite, exact order, persistence, failures by id."""

from __future__ import annotations

import numpy as np
import pytest

from spladeray.index import LocalIndex, SparseIndex


def _random_vectors(rng, n, vocab=200, nnz=20):
    out = []
    for _ in range(n):
        toks = rng.choice(vocab, size=nnz, replace=False)
        out.append({f"t{t}": float(w) for t, w in zip(toks, rng.random(nnz) + 0.01, strict=True)})
    return out


def _brute_force(docs: dict, query: dict, k: int):
    scores = {d: sum(w * v.get(t, 0.0) for t, w in query.items()) for d, v in docs.items()}
    ranked = sorted(((s, d) for d, s in scores.items() if s > 0), key=lambda x: (-x[0], x[1]))
    return [(d, s) for s, d in ranked[:k]]


def test_protocol():
    assert isinstance(LocalIndex("/tmp/unused-protocol-check"), SparseIndex)


def test_search_equals_brute_force_and_overwrite(tmp_path):
    rng = np.random.default_rng(0)
    index = LocalIndex(tmp_path)
    ids = [f"d{i}" for i in range(300)]
    vecs = _random_vectors(rng, 300)
    res = index.add("c", ids[:150], vecs[:150])
    res = res.merge(index.add("c", ids[150:], vecs[150:]))
    assert res.indexed == 300 and not res.failed
    docs = dict(zip(ids, vecs, strict=True))
    # overwrite 20 ids with new vectors: count stays, results follow the new vectors
    new = _random_vectors(rng, 20)
    index.add("c", ids[:20], new, [{"v": 2}] * 20)
    docs.update(zip(ids[:20], new, strict=True))
    assert index.count("c") == 300
    for query in _random_vectors(rng, 10, nnz=5):
        got = [(h.id, h.score) for h in index.search("c", query, size=10)]
        want = _brute_force(docs, query, 10)
        assert [d for d, _ in got] == [d for d, _ in want]
        assert np.allclose([s for _, s in got], [s for _, s in want], rtol=1e-5)
    assert index.search("c", new[0], 1)[0].fields == {"v": 2}
    assert index.get("c", "d0") == pytest.approx(new[0])


def test_persistence_and_multi_process_visibility(tmp_path):
    a = LocalIndex(tmp_path)
    a.add("p", ["x", "y"], [{"a": 1.0}, {"a": 2.0, "b": 1.0}], [{"title": "X"}, {"title": "Y"}])
    b = LocalIndex(tmp_path)  # a second process's view of the same folder
    assert b.count("p") == 2
    b.add("p", ["z"], [{"a": 3.0}])
    assert [h.id for h in a.search("p", {"a": 1.0})] == ["z", "y", "x"]
    a.compact("p")
    c = LocalIndex(tmp_path)
    assert c.count("p") == 3 and c.search("p", {"b": 1.0})[0].fields == {"title": "Y"}
    c.delete("p")
    assert not c.exists("p")
    with pytest.raises(KeyError):
        c.count("p")


def test_bad_documents_are_reported_by_id(tmp_path):
    index = LocalIndex(tmp_path)
    res = index.add(
        "b",
        ["ok", "", "nan", "neg", "dup"],
        [{"a": 1.0}, {"a": 1.0}, {"a": float("nan")}, {"a": -1.0}, {"a": 0.0, "b": 2.0}],
    )
    assert res.indexed == 2
    assert {f.id for f in res.failed} == {"", "nan", "neg"}
    assert all(f.error for f in res.failed)
    assert index.get("b", "dup") == {"b": 2.0}, "zero weights are dropped, not stored"


def test_search_many_matches_single(tmp_path):
    rng = np.random.default_rng(1)
    index = LocalIndex(tmp_path)
    index.add("m", [str(i) for i in range(50)], _random_vectors(rng, 50))
    queries = _random_vectors(rng, 5, nnz=4)
    many = index.search_many("m", queries, size=5)
    for q, hits in zip(queries, many, strict=True):
        assert [h.id for h in hits] == [h.id for h in index.search("m", q, size=5)]
    assert index.search("m", {"unknown-token": 1.0}) == []


def test_seismic_approximate_search_agrees_with_exact(tmp_path, splade_tiny, scifact):
    """Approximate mode on real SPLADE vectors: top-10 overlaps exact top-10 almost entirely."""
    from spladeray.data.beir import doc_text, iter_corpus, load_queries
    from spladeray.model import SpladeEncoder

    enc = SpladeEncoder.from_pretrained(str(splade_tiny))
    docs = list(iter_corpus(scifact, limit=300))
    vectors = enc.encode_documents([doc_text(d) for d in docs])
    exact = LocalIndex(tmp_path)
    exact.add("s", [d["_id"] for d in docs], vectors)
    approx = LocalIndex(tmp_path, search="seismic", seismic={"n_postings": 200})
    queries = enc.encode_queries(list(load_queries(scifact).values())[:30])
    overlap = []
    for want, got in zip(
        exact.search_many("s", queries, 10), approx.search_many("s", queries, 10), strict=True
    ):
        assert [h.score for h in got] == sorted((h.score for h in got), reverse=True)
        overlap.append(len({h.id for h in want} & {h.id for h in got}) / max(len(want), 1))
        exact_scores = {h.id: h.score for h in want}
        for hit in got:  # Seismic stores half-precision values: scores agree to ~1e-3
            if hit.id in exact_scores:
                assert hit.score == pytest.approx(exact_scores[hit.id], rel=1e-2)
    print(f"seismic top-10 overlap with exact: {np.mean(overlap):.3f}")
    assert np.mean(overlap) >= 0.9


def test_text_search_is_bm25_over_title_and_text_and_follows_changes(tmp_path):
    index = LocalIndex(tmp_path)
    fields = [
        {"title": "Mitochondria", "text": "Mitochondria produce energy for the cell."},
        {"title": "", "text": "The heart pumps blood through the arteries."},
        {"title": "Plants", "text": "Photosynthesis turns light into chemical energy."},
    ]
    index.add("t", ["m", "h", "p"], [{"x": 1.0}] * 3, fields)
    hits = index.text_search("t", "photosynthesis of plants", size=5)
    assert [h.id for h in hits] == ["p"] and hits[0].score > 0 and hits[0].fields == fields[2]
    assert {h.id for h in index.text_search("t", "energy", size=5)} == {"m", "p"}
    assert index.text_search("t", "the and of", size=5) == []  # stopwords only
    assert index.text_search("t", "pumping hearts", size=5)[0].id == "h"  # stemmed (english)
    # a write (also from another process) is searchable at once: the BM25 index is rebuilt
    LocalIndex(tmp_path).add("t", ["k"], [{"x": 1.0}], [{"text": "Kidneys filter blood."}])
    assert [h.id for h in index.text_search("t", "kidneys", size=5)] == ["k"]
    index.add("t", ["k"], [{"x": 1.0}], [{"text": "Livers store glycogen."}])  # overwritten
    assert index.text_search("t", "kidneys", size=5) == []


def test_text_search_language_comes_from_config(tmp_path):
    from spladeray.config import IndexConfig, parse_config
    from spladeray.index import open_index

    assert IndexConfig().text_language == "english"
    cfg = IndexConfig(path=tmp_path, text_language="german")
    index = open_index(cfg)
    assert index.text_language == "german"
    index.add("de", ["a", "b"], [{"x": 1.0}] * 2, [{"text": "Die Häuser"}, {"text": "Ein Baum"}])
    assert [h.id for h in index.text_search("de", "Haus", size=2)] == ["a"]  # german stemming
    unstemmed = LocalIndex(tmp_path, text_language=None)
    assert unstemmed.text_search("de", "Haus", size=2) == []
    with pytest.raises(Exception, match="text_language"):
        parse_config({"model": {"path": "m"}, "index": {"text_language": "klingon"}})


def test_existing_answers_a_resumed_batch_from_the_live_ids(tmp_path):
    """A resumed bulk run asks per batch which ids are held; a deleted id is not."""
    index = LocalIndex(tmp_path)
    index.add("kb", ["a"], [{"x": 1.0}])
    index.add("kb", ["b", "c"], [{"x": 1.0}, {"y": 2.0}])  # a second segment
    index.delete_documents("kb", ["c"])
    assert index.existing("kb", ["c", "zz", "a", "b"]) == {"a", "b"}
    assert index.existing("kb", []) == set() and index.existing("missing", ["a"]) == set()


def test_a_dead_writers_tmp_segment_is_removed_and_a_live_ones_kept(tmp_path, caplog):
    import os

    LocalIndex(tmp_path).add("kb", ["a"], [{"x": 1.0}])
    dead, live = tmp_path / "kb" / ".tmp-seg-dead", tmp_path / "kb" / ".tmp-seg-live"
    for d in (dead, live):
        d.mkdir()
        (d / "row_ptr.npy").write_bytes(b"partial")
    os.utime(dead, (0, 0))  # untouched since 1970: its writer is gone
    fresh = LocalIndex(tmp_path)
    assert fresh.ids("kb") == {"a"}
    assert not dead.exists() and live.exists()  # a writer mid-write keeps its directory
    assert ".tmp-seg-dead" in caplog.text


def test_the_embedded_index_has_the_whole_protocol_and_no_aliases(tmp_path):
    from spladeray.index import AliasesUnsupportedError, IndexNotFoundError

    index = LocalIndex(tmp_path)
    assert isinstance(index, SparseIndex)
    index.add("kb-1", ["a"], [{"x": 1.0}])
    index.refresh("kb-1")
    assert index.ids("missing") == set() and index.ids("kb-1") == {"a"}
    assert index.alias_targets("kb") == [] and index.resolve_alias("kb-1") is None
    assert index.index_meta("kb-1") == {}
    assert [i.name for i in index.list_indices("kb-*")] == ["kb-1"]
    with pytest.raises(AliasesUnsupportedError, match="opensearch"):
        index.update_alias("kb", "kb-1")
    with pytest.raises(AliasesUnsupportedError):
        index.set_index_meta("kb-1", {"model_hash": "a"})
    with pytest.raises(IndexNotFoundError):
        index.search("missing", {"x": 1.0})
    index.close()
    assert index.count("kb-1") == 1  # closing drops only the in-memory copy


def test_one_document_check_for_every_write_path():
    from spladeray.index.base import Failure
    from spladeray.index.documents import Document, check_document, check_row

    doc = check_document(7, "Title", "body", {"lang": "en"})
    assert doc == Document("7", "Title", "body", {"lang": "en"})
    assert doc.encode_text == "Title body"
    assert doc.fields() == {"lang": "en", "title": "Title", "text": "body"}
    assert check_document("t", "Only a title") == Document("t", "Only a title", "")
    for args, reason in [
        (("", None, "x"), "non-empty string"),
        ((None, None, "x"), "non-empty string"),
        ((True, None, "x"), "non-empty string"),
        (("x" * 600, None, "x"), "512 bytes"),
        (("a", None, ""), "text is empty"),
        (("a", "  ", " "), "text is empty"),
        (("a", None, 5), "text must be a string"),
        (("a", 5, "x"), "title must be a string"),
    ]:
        failure = check_document(*args)
        assert isinstance(failure, Failure) and reason in failure.error, (args, failure)
    assert check_document(None, None, "x").id == ""
    assert check_row({"_id": "d1", "title": "T", "text": "t", "metadata": {}}) == Document(
        "d1", "T", "t"
    )
    assert isinstance(check_row(["not", "a", "dict"]), Failure)
