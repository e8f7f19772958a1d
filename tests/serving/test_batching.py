"""Batching inside a replica, without Ray: the token budget, the config check, doc-only queries.

:class:`~spladeray.serving.encoder.BatchedEncoder` is built here outside Serve; its batch
function (``_run_batch``: split by token budget, encode in a worker thread) is called directly
with what ``@serve.batch`` would hand it. The queue itself is Serve's and is exercised over
HTTP in test_serve.py.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from fixtures_osmem import serve_config
from pydantic import ValidationError

from spladeray.config import ConfigError, ServeConfig, parse_config
from spladeray.serving.encoder import BatchedEncoder, plan_batches
from spladeray.serving.metrics import ReplicaMetrics


def test_plan_batches_keeps_every_call_under_the_token_budget():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 40))]
        budget = rng.choice([64, 256, 1000, 8192])
        plan = plan_batches(lengths, budget)
        assert sorted(i for part in plan for i in part) == list(range(len(lengths)))
        for part in plan:
            widths = [lengths[i] for i in part]
            assert widths == sorted(widths, reverse=True)  # longest first: padded to part[0]
            assert len(part) == 1 or len(part) * widths[0] <= budget
    # one text over the budget goes alone; short texts are not padded to a long one
    assert plan_batches([5, 500, 5, 5], 100) == [[1], [0, 2, 3]]
    assert plan_batches([10] * 8, 40) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert plan_batches([], 10) == []


def test_max_ongoing_requests_below_the_batch_size_is_refused_at_load(splade_tiny):
    def serve(**values):
        return ServeConfig.model_validate({"target_ongoing_requests": 4, **values})

    with pytest.raises(
        ValidationError, match=r"max_ongoing_requests \(16\) is below serve.max_batch_size \(32\)"
    ):
        serve(max_batch_size=32, max_ongoing_requests=16)
    with pytest.raises(ValidationError, match="query_max_batch_size"):
        serve(query_max_batch_size=128, max_ongoing_requests=64)
    with pytest.raises(ValidationError, match="one deployment"):
        serve(ingress_replicas=2)
    assert serve(max_batch_size=32, max_ongoing_requests=32).max_ongoing_requests == 32
    # through the loader, as a user sees it
    with pytest.raises(ConfigError, match="batches could never fill"):
        parse_config(
            {
                "model": {"path": str(splade_tiny)},
                "serve": {"max_batch_size": 65, "target_ongoing_requests": 4},
            }
        )


def _calls(metrics: ReplicaMetrics, kind: str) -> float:
    return (
        metrics.registry.get_sample_value("spladeray_encode_batch_size_count", {"kind": kind}) or 0
    )


def test_a_batch_is_cut_under_the_token_budget_and_encodes_like_the_model(splade_tiny, tmp_path):
    cfg = serve_config(splade_tiny, tmp_path, max_batch_tokens=256)
    metrics = ReplicaMetrics()
    batched = BatchedEncoder(cfg, metrics)
    enc = batched.model
    texts = [
        "cells " * 200,  # truncated to max_document_length (128 tokens)
        "short one",
        "mitochondria produce energy " * 10,
        "tiny",
        "dna " * 100,
    ]
    lengths = batched._lengths(enc, texts, "document")
    assert max(lengths) == cfg.model.max_document_length
    out = asyncio.run(batched._run_batch("document", texts, [""] * len(texts), lengths))
    want = enc.encode_documents(texts)
    for got, w, n in zip(out, want, lengths, strict=True):
        assert got.tokens == n
        assert set(got.vector) == set(w)
        assert all(got.vector[t] == pytest.approx(w[t], rel=1e-4, abs=1e-5) for t in w)
    plan = plan_batches(lengths, 256)
    assert len(plan) > 1  # the long texts did not share one padded tensor
    assert _calls(metrics, "document") == len(plan)
    tokens = metrics.registry.get_sample_value("spladeray_tokens_total", {"kind": "document"})
    assert tokens == sum(lengths)


def test_a_chunked_document_is_budgeted_by_all_its_windows(splade_tiny, tmp_path):
    """With model.document_stride, a long document's length for the token budget is the tokens
    of every window, and the served vectors still equal the encoder's (max-pooled windows)."""
    cfg = serve_config(splade_tiny, tmp_path, max_batch_tokens=256)
    cfg.model.document_stride = 32
    batched = BatchedEncoder(cfg, ReplicaMetrics())
    enc = batched.model
    texts = ["cells divide " * 150, "short one"]
    lengths = batched._lengths(enc, texts, "document")
    whole = len(enc.tokenizer(texts[0], add_special_tokens=False)["input_ids"])
    assert lengths[0] > cfg.model.max_document_length and lengths[0] >= whole
    assert lengths[1] == len(enc.tokenizer(texts[1])["input_ids"])
    out = asyncio.run(batched._run_batch("document", texts, [""] * 2, lengths))
    for got, want in zip(out, enc.encode_documents(texts), strict=True):
        assert set(got.vector) == set(want)


def test_doc_only_queries_never_enter_the_batch_queue(splade_tiny, tmp_path):
    """A doc-only model's queries are IDF lookups answered at once: here, outside any Serve
    replica (where a ``@serve.batch`` queue cannot even be created), they encode, one lookup
    per request, while documents still need the model's batch queue."""
    from spladeray.model.idf import compute_idf, save_idf

    from helpers import tiny_tokenizer

    save_idf(
        compute_idf(["cells divide", "dna helix", "cells"], tiny_tokenizer(splade_tiny)),
        tmp_path / "idf.json",
    )
    cfg = serve_config(splade_tiny, tmp_path)
    cfg.model.idf_path = tmp_path / "idf.json"
    metrics = ReplicaMetrics()
    batched = BatchedEncoder(cfg, metrics)
    assert batched.model.doc_only
    queries = ["do cells divide", "dna"]
    out = asyncio.run(batched.encode(queries, "query"))
    assert [o.vector for o in out] == batched.model.encode_queries(queries)
    assert _calls(metrics, "query") == 1 and _calls(metrics, "document") == 0
