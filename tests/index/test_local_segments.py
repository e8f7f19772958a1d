"""The embedded index at the segment level: tiered merges, reopening, deletes, concurrency.

Small random data, checked against a brute-force dot product over the documents we wrote.
"""

from __future__ import annotations

import multiprocessing
import threading
import time

import numpy as np
import pytest

from spladeray.index import LocalIndex
from spladeray.index.merge_policy import TieredMergePolicy

SMALL = TieredMergePolicy(factor=3, floor_docs=8, max_docs=10_000)


def _vectors(rng, n, vocab=400, nnz=12):
    """Skewed token frequencies (Zipf-like) so that common tokens have long postings."""
    p = 1.0 / np.arange(1, vocab + 1)
    p /= p.sum()
    out = []
    for _ in range(n):
        toks = rng.choice(vocab, size=nnz, replace=False, p=p)
        out.append({f"t{t}": float(w) for t, w in zip(toks, rng.random(nnz) + 0.01, strict=True)})
    return out


def _brute(docs: dict, query: dict, k: int) -> list[tuple[str, float]]:
    scores = {d: sum(w * v.get(t, 0.0) for t, w in query.items()) for d, v in docs.items()}
    ranked = sorted(((s, d) for d, s in scores.items() if s > 0), key=lambda x: (-x[0], x[1]))
    return [(d, s) for s, d in ranked[:k]]


def _check(index: LocalIndex, name: str, docs: dict, queries, k: int) -> None:
    assert index.count(name) == len(docs)
    for query, hits in zip(queries, index.search_many(name, queries, size=k), strict=True):
        want = _brute(docs, query, k)
        assert [h.id for h in hits] == [d for d, _ in want]
        assert [h.score for h in hits] == pytest.approx([s for _, s in want], rel=1e-5)


def test_tiered_merges_keep_the_segment_count_logarithmic(tmp_path):
    """(~2 s) 600 one-batch writes of 8 documents: never more than factor-1 segments a tier."""
    rng = np.random.default_rng(0)
    index = LocalIndex(tmp_path, merge_policy=SMALL)
    docs = {}
    counts = []
    for b in range(75):
        ids = [f"d{b}-{i}" for i in range(8)]
        vecs = _vectors(rng, 8)
        index.add("m", ids, vecs)
        docs.update(zip(ids, vecs, strict=True))
        counts.append(len(index.segment_sizes("m")))
    tiers = 1 + SMALL.tier(len(docs))
    assert max(counts) <= (SMALL.factor - 1) * tiers + 1
    assert sum(index.segment_sizes("m")) == len(docs) == 600  # merges lose and copy nothing
    assert max(index.segment_sizes("m")) >= 8 * SMALL.factor**2  # it did merge, twice over
    _check(index, "m", docs, _vectors(rng, 10, nnz=5), 10)


def test_search_equals_brute_force_after_overwrites_deletes_and_merges(tmp_path):
    """(~3 s) exact top-k (with its pruning) on every state of a randomly edited index."""
    rng = np.random.default_rng(1)
    index = LocalIndex(tmp_path, merge_policy=SMALL)
    docs: dict[str, dict] = {}
    queries = _vectors(rng, 12, nnz=6)
    for step in range(30):
        ids = [f"d{i}" for i in rng.choice(300, size=20, replace=False)]
        if step % 5 == 4:  # delete some ids (some of them never written)
            res = index.delete_documents("e", ids)
            assert res.indexed == len(ids) and not res.failed
            for d in ids:
                docs.pop(d, None)
        else:  # add or overwrite
            vecs = _vectors(rng, len(ids))
            index.add("e", ids, vecs)
            docs.update(zip(ids, vecs, strict=True))
        if step % 6 == 5:
            _check(index, "e", docs, queries, 10)
    _check(index, "e", docs, queries, 10)
    _check(index, "e", docs, queries[:3], 200)  # k beyond the number of hits
    assert index.delete_documents("e", ["", "ok"]).failed[0].id == ""
    docs.pop("ok", None)
    deleted = next(f"d{i}" for i in range(300) if f"d{i}" not in docs)
    assert index.get("e", deleted) is None
    kept = next(iter(docs))
    assert index.get("e", kept) == pytest.approx(docs[kept])
    assert index.ids("e") == set(docs)
    index.compact("e")
    assert len(index.segment_sizes("e")) == 1 and index.segment_sizes("e")[0] == len(docs)
    _check(index, "e", docs, queries, 10)


def test_a_reopened_index_is_identical(tmp_path):
    """(~1 s) a fresh LocalIndex on the same folder answers exactly as the writer does."""
    rng = np.random.default_rng(2)
    writer = LocalIndex(tmp_path, merge_policy=SMALL)
    for b in range(12):
        ids = [f"d{i}" for i in rng.choice(100, size=15, replace=False)]
        writer.add("r", ids, _vectors(rng, 15), [{"b": b}] * 15)
        if b % 4 == 3:
            writer.delete_documents("r", ids[:3])
    reader = LocalIndex(tmp_path)
    assert reader.segment_sizes("r") == writer.segment_sizes("r")
    assert reader.ids("r") == writer.ids("r") and reader.count("r") == writer.count("r")
    queries = _vectors(rng, 10, nnz=5)
    for a, b in zip(
        writer.search_many("r", queries, 20), reader.search_many("r", queries, 20), strict=True
    ):
        assert [(h.id, h.score, h.fields) for h in a] == [(h.id, h.score, h.fields) for h in b]
    for doc_id in sorted(writer.ids("r")):
        assert reader.get("r", doc_id) == writer.get("r", doc_id)


def _writer(root: str, worker: int, batches: int) -> None:
    rng = np.random.default_rng(100 + worker)
    index = LocalIndex(root, merge_policy=SMALL)
    for b in range(batches):
        ids = [f"w{worker}-{b}-{i}" for i in range(10)]
        vecs = [{k: v for k, v in vec.items()} | {f"w{worker}": 1.0} for vec in _vectors(rng, 10)]
        assert not index.add("c", ids, vecs).failed


def test_concurrent_writer_processes_and_searcher_threads_lose_nothing(tmp_path):
    """(~10 s) 3 processes write (and merge) while 2 threads search: every document arrives."""
    workers, batches = 3, 12
    LocalIndex(tmp_path).create("c")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, batches)) for w in range(workers)]
    reader = LocalIndex(tmp_path)
    errors: list[BaseException] = []
    stop = threading.Event()

    def search() -> None:
        try:
            while not stop.is_set():
                for hits in reader.search_many("c", [{"w0": 1.0}, {"w1": 1.0, "t0": 1.0}], 50):
                    assert len({h.id for h in hits}) == len(hits)  # never a duplicate
                reader.count("c")
                time.sleep(0.01)  # leave the 2 CI cores to the writers
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=search) for _ in range(2)]
    for p in procs:
        p.start()
    for t in threads:
        t.start()
    for p in procs:
        p.join(120)
    stop.set()
    for t in threads:
        t.join(60)
    assert [p.exitcode for p in procs] == [0] * workers
    assert not errors, errors
    want = {f"w{w}-{b}-{i}" for w in range(workers) for b in range(batches) for i in range(10)}
    fresh = LocalIndex(tmp_path)
    assert fresh.ids("c") == want and reader.ids("c") == want
    assert sum(fresh.segment_sizes("c")) == len(want)  # merged copies were removed
    hits = fresh.search("c", {"w1": 1.0}, size=1000)
    assert {h.id for h in hits} == {d for d in want if d.startswith("w1-")}


def test_an_index_in_the_old_parquet_format_is_refused_with_a_message(tmp_path):
    """(<1 s) format 2 does not read parquet segments; the error says what to do."""
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "seg-00000000000000000001-abcd1234.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match="re-index"):
        LocalIndex(tmp_path).count("old")
