"""Evaluation that streams: index-backed systems never gather per-document state in the driver.

The proof is by construction: :data:`spladeray.index.encoding.DRIVER_DOCS_CAP` makes every
driver-side path that would hold the corpus or its vectors (``Corpus.load``, ``collect``) raise
when the corpus is larger than the cap. An index-backed system on the actor pool evaluates a
corpus larger than the cap, and gives the same run as exact in-memory search without a cap; an
in-memory system under the same cap raises, so the guard is live.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from spladeray.config import (
    EvalDatasetConfig,
    EvalSparseConfig,
    EvaluateConfig,
    IndexConfig,
    ModelConfig,
)
from spladeray.eval.sparsity import DocSparsity, sparsity_stats
from spladeray.index import encoding

from helpers import build_tiny_mlm, tiny_tokenizer, write_beir

WORDS = [
    "measles",
    "vaccine",
    "insulin",
    "glucose",
    "tumor",
    "lung",
    "sleep",
    "memory",
    "statin",
    "heart",
    "cholesterol",
    "protein",
    "gene",
    "cell",
    "brain",
    "blood",
    "kidney",
    "liver",
    "virus",
    "bacteria",
    "diet",
    "exercise",
    "smoking",
    "cancer",
    "therapy",
]
N_DOCS = 120
CAP = 40


@pytest.fixture(scope="module")
def beir(tmp_path_factory) -> Path:
    rng = random.Random(7)
    corpus = [
        {"_id": f"d{i}", "title": "", "text": " ".join(rng.sample(WORDS, 6))} for i in range(N_DOCS)
    ]
    corpus.insert(5, {"_id": "bad", "text": ""})  # a rejected row: counted, never indexed
    queries = [{"_id": f"q{j}", "text": " ".join(rng.sample(WORDS, 3))} for j in range(8)]
    qrels = [(f"q{j}", f"d{rng.randrange(N_DOCS)}", 1) for j in range(8)]
    return write_beir(
        tmp_path_factory.mktemp("beir") / "synthetic", corpus, queries, {"dev": qrels}
    )


@pytest.fixture(scope="module")
def model_cfg(splade_tiny, tmp_path_factory) -> ModelConfig:
    out = tmp_path_factory.mktemp("tiny") / "tiny-bert"
    path = build_tiny_mlm("bert", tiny_tokenizer(splade_tiny), out)
    return ModelConfig(path=str(path), device="cpu", max_document_length=32, top_k=32)


def _evaluate(beir, model_cfg, system, distributed=None):
    from spladeray.eval.runner import evaluate_systems

    return evaluate_systems(
        [EvalDatasetConfig(beir_dir=beir, split="dev")],
        [system],
        default_model=model_cfg,
        measures=["nDCG@10", "R@100"],
        depth=20,
        latency_queries=2,
        distributed=distributed,
    )


def test_an_index_backed_system_evaluates_a_corpus_larger_than_the_driver_cap(
    ray_cluster, beir, model_cfg, tmp_path, monkeypatch
):
    exact = _evaluate(beir, model_cfg, EvalSparseConfig(name="exact"))
    index = IndexConfig(backend="local", path=str(tmp_path / "index"))
    pool = EvaluateConfig(distributed=True, num_actors=2, actor_batch_size=16)
    monkeypatch.setattr(encoding, "DRIVER_DOCS_CAP", CAP)
    with pytest.raises(encoding.DriverCapExceeded, match="DRIVER_DOCS_CAP = 40"):
        _evaluate(beir, model_cfg, EvalSparseConfig(name="exact"))  # the guard is live
    streamed = _evaluate(beir, model_cfg, EvalSparseConfig(name="indexed", index=index), pool)

    a, b = exact.per_dataset["synthetic"]["exact"], streamed.per_dataset["synthetic"]["indexed"]
    assert streamed.datasets[0]["documents"] == N_DOCS > CAP
    assert streamed.datasets[0]["rejected_rows"] == 1
    assert b.docs_per_s is not None and b.latency_ms["n"] == 2
    for measure, value in a.metrics.items():
        assert b.metrics[measure] == pytest.approx(value, abs=1e-9), measure
    for key, value in a.sparsity.items():  # aggregated per batch in the actors
        assert b.sparsity[key] == pytest.approx(value, rel=1e-9), key
    assert not any((tmp_path / "index").iterdir())  # the system's index is dropped when done


def test_evaluation_hybrid_is_the_served_hybrid(beir, model_cfg, tmp_path):
    """IndexedSparseRetriever(hybrid) answers exactly what index.search.search (what POST
    /search calls) answers with hybrid on the same index."""
    from spladeray.eval.runner import Corpus, build_retriever
    from spladeray.index import search as search_path

    index = IndexConfig(backend="local", path=str(tmp_path / "index"))
    system = EvalSparseConfig(name="hybrid", index=index, hybrid=True, rrf_k=30)
    retriever = build_retriever(system, default_model=model_cfg)
    try:
        retriever.index_corpus(Corpus(str(beir), None, N_DOCS))
        query = "lung cancer smoking therapy"
        got = retriever.search([query], k=7)[0]
        limited = search_path.limit(
            retriever.encoder.encode_queries([query])[0], query, max_terms=1024, hybrid=True
        )
        served = search_path.search(
            retriever.backend,
            retriever.index_name,
            limited.vector,
            7,
            text=limited.text,
            hybrid=True,
            rrf_k=30,
        )
        assert list(got.items()) == [(h.hit.id, h.hit.score) for h in served]
        assert any(h.bm25_score is not None for h in served)  # both legs took part
        assert len(got) == 7
    finally:
        retriever.close()


def test_doc_sparsity_merged_over_batches_equals_sparsity_stats():
    docs = sp.random(500, 300, density=0.05, format="csr", random_state=1, dtype=np.float32)
    queries = sp.random(20, 300, density=0.03, format="csr", random_state=2, dtype=np.float32)
    merged = DocSparsity()
    for a in range(0, 500, 37):  # through JSON, as actors send it
        merged.merge(DocSparsity.from_json(DocSparsity().add(docs[a : a + 37]).to_json()))
    whole = sparsity_stats(queries, docs)
    assert merged.n == 500
    for key, value in merged.stats(queries).items():
        assert value == pytest.approx(whole[key], rel=1e-12), key


def test_hybrid_needs_an_index():
    with pytest.raises(ValueError, match="hybrid searches through an index"):
        EvalSparseConfig(name="x", hybrid=True)


def test_the_encoder_actor_writes_into_the_index_and_returns_only_a_summary(model_cfg, tmp_path):
    """EncodeActor + IndexSink as each pool actor runs them (called directly, without Ray):
    the batch lands in the index with the vectors the encoder gives, and what comes back is
    one summary row, never the vectors."""
    import json

    from spladeray.index import open_index
    from spladeray.model import load_encoder_from_config

    index = IndexConfig(backend="local", path=str(tmp_path / "index"))
    sink = encoding.IndexSink(index, "eval-x", store_text=True)
    actor = encoding.EncodeActor(encoding.SparseFactory(model_cfg=model_cfg), "sparse", 1, sink)
    texts = ["lung cancer smoking", "sleep memory brain", "insulin glucose diet"]
    out = actor({"id": np.array(["a", "b", "c"]), "text": np.array(texts)})
    assert set(out) == {"indexed", "failed", "sparsity"} and len(out["indexed"]) == 1
    assert int(out["indexed"][0]) == 3 and json.loads(str(out["failed"][0])) == []
    encoder = load_encoder_from_config(model_cfg)
    expected = encoder.to_dicts(encoder.encode_csr(texts, "document"))
    stats = DocSparsity.from_json(json.loads(str(out["sparsity"][0])))
    assert stats.n == 3
    stored = open_index(index)
    for doc_id, vector in zip("abc", expected, strict=True):
        got = stored.get("eval-x", doc_id)
        assert got.keys() == vector.keys()
        assert list(got.values()) == pytest.approx([vector[t] for t in got], rel=1e-6)
    assert stored.text_search("eval-x", "insulin", 1)[0].id == "c"


def test_an_encoder_pool_the_cluster_cannot_place_fails_with_the_numbers(ray_cluster):
    """(<1 s on the session cluster) a pool asking for GPUs the cluster lacks is refused at once,
    with both numbers, instead of Ray Data waiting for them forever."""
    import ray.data

    ds = ray.data.from_items([{"row": 0, "text": "a"}])
    with pytest.raises(RuntimeError, match=r"corpus encoder \(2 actors\) needs 2 GPUs but the"):
        encoding.encode_dataset(ds, encoding.SparseFactory, "sparse", num_actors=2, num_gpus=1.0)
