"""Limits a real OpenSearch enforces, met before it sees a request (issue 14, item 5).

- more query terms than ``indices.query.bool.max_clause_count`` (1,024 by default): pruned to the
  heaviest, with a ``warnings`` entry in the ``/search`` answer;
- rank_feature boosts outside (0, 64]: clipped (or dropped), with a warning;
- feature names longer than Lucene's term limit: dropped, with a warning;
- an oversized document on ``/index``: failed by id with the reason, never a 5xx.

The pruning is unit-tested on the query builder; one ``/search`` over HTTP sends > 1,024 query
terms through an inference-free (doc-only) model, whose query vector is one IDF weight per
distinct token, so a long query really has that many terms.
"""

from __future__ import annotations

import httpx
import pytest
from fixtures_osmem import serve_config, wait_healthy

from spladeray.config import ConfigError, ServeConfig, parse_config
from spladeray.index.opensearch import (
    MAX_CLAUSE_COUNT,
    MAX_FEATURE_NAME_BYTES,
    OpenSearchIndex,
    limit_query,
)
from spladeray.serving.limits import document_bytes, lexical_query, query_warnings

APP = "spladeray-limits"
PREFIX = "/limits"
N_TERMS = 1500  # query terms sent over HTTP, above the 1,024 default
HEAVY = 3  # terms whose IDF weight is above 64 (clipped)


def _query(n: int) -> dict[str, float]:
    """``t0000 .. t<n-1>`` with distinct weights: the higher the number, the heavier."""
    return {f"t{i:04d}": 0.01 * (i + 1) for i in range(n)}


# --------------------------------------------------------------------------- the query builder
def test_limit_query_keeps_the_heaviest_terms():
    query = _query(1500)
    kept, report = limit_query(query)
    assert len(kept) == MAX_CLAUSE_COUNT == 1024
    assert set(kept) == {f"t{i:04d}" for i in range(1500 - 1024, 1500)}
    assert min(kept.values()) > max(w for t, w in query.items() if t not in kept)
    assert report.terms == 1500 and report.pruned == 476 and report.changed
    same, report = limit_query(_query(1024))
    assert same == _query(1024) and not report.changed


def test_limit_query_clips_and_drops_out_of_range_weights_and_names():
    query = {
        "big": 100.0,
        "edge": 64.0,
        "ok": 0.5,
        "zero": 0.0,
        "neg": -1.0,
        "nan": float("nan"),
        "inf": float("inf"),
        "text": "1.0",
        "": 1.0,
        "x" * (MAX_FEATURE_NAME_BYTES + 1): 1.0,
        # a name that fits as given, but not once "." is escaped to "%2E" (what Lucene sees)
        "." * (MAX_FEATURE_NAME_BYTES // 2): 1.0,
        "y" * MAX_FEATURE_NAME_BYTES: 2.0,  # exactly at the limit: kept
    }
    kept, report = limit_query(query)
    assert kept == {"big": 64.0, "edge": 64.0, "ok": 0.5, "y" * MAX_FEATURE_NAME_BYTES: 2.0}
    assert (report.clipped, report.bad_weights, report.long_names, report.bad_names) == (
        1,
        5,
        2,
        1,
    )
    codes = {w["code"]: w["count"] for w in query_warnings(report, 1024)}
    assert codes == {
        "query_weights_clipped": 1,
        "query_weights_dropped": 5,
        "feature_names_too_long": 2,
        "feature_names_invalid": 1,
    }
    with pytest.raises(ValueError):
        limit_query(query, max_terms=0)


def test_rank_feature_query_body_never_exceeds_max_clause_count():
    query = _query(1500) | {"a.b": 100.0}
    body = OpenSearchIndex(None).query_body(query, size=10)
    clauses = body["query"]["bool"]["should"]
    assert len(clauses) == 1024
    boosts = {c["rank_feature"]["field"]: c["rank_feature"]["boost"] for c in clauses}
    assert boosts["sparse.a%2Eb"] == 64.0  # the heaviest, escaped and clipped
    assert "sparse.t1499" in boosts and "sparse.t0476" not in boosts
    assert all(0 < b <= 64 for b in boosts.values())
    small = OpenSearchIndex(None, max_clause_count=10).query_body(query, size=10)
    assert len(small["query"]["bool"]["should"]) == 10
    with pytest.raises(ValueError):
        OpenSearchIndex(None, max_clause_count=0)


def test_neural_sparse_query_body_is_pruned_too():
    index = OpenSearchIndex(None, query_type="neural_sparse", max_clause_count=100)
    tokens = index.query_body(_query(300), size=5)["query"]["neural_sparse"]["sparse"]
    assert len(tokens["query_tokens"]) == 100 and "t0299" in tokens["query_tokens"]


def test_pruned_query_is_answered_by_opensearch(osmem):
    """The body we send for a 1,500-term query is accepted (osmem; or a real cluster)."""
    from opensearchpy import OpenSearch

    clone = osmem.clone()
    try:
        index = OpenSearchIndex(OpenSearch(hosts=[clone.url]))
        index.create("limits")
        index.add("limits", ["d1", "d2"], [{"t1499": 1.0, "t0001": 5.0}, {"t0001": 1.0}])
        index.refresh("limits")
        hits = index.search("limits", _query(1500), size=5)
        assert [h.id for h in hits] == ["d1"]  # t0001 was pruned: d2 has no kept term
    finally:
        clone.close()


def test_serve_config_limits_and_protect():
    cfg = ServeConfig()
    assert cfg.max_query_terms == 1024 and cfg.protect == ["encode", "index", "search"]
    assert ServeConfig(bearer_token_env="T", protect=["search", "index", "search"]).protect == [
        "index",
        "search",
    ]
    for bad in (
        {"protect": ["docs"]},
        {"bearer_token_env": None, "protect": ["search"]},  # no token to protect it with
        {"bearer_token_env": "T", "protect": []},
        {"max_query_terms": 0},
        {"max_document_bytes": 0},
    ):
        with pytest.raises(ConfigError):
            parse_config({"model": {"path": "m"}, "serve": bad})


def test_lexical_query_stays_within_the_clause_limit():
    """multi_match over title and text: one clause per word and field."""
    text = " ".join(f"w{i}" for i in range(600))
    cut, warning = lexical_query(text, 1024)
    assert cut.split() == [f"w{i}" for i in range(512)]
    assert warning["code"] == "lexical_query_truncated" and warning["count"] == 88
    assert lexical_query("short query", 1024) == ("short query", None)


def test_document_bytes_counts_utf8_json():
    assert document_bytes({"text": "é"}) == len('{"text": "é"}'.encode())


# --------------------------------------------------------------------------- over HTTP
@pytest.fixture(scope="module")
def doc_only(splade_tiny, tmp_path_factory):
    """An IDF table for splade-tiny over N_TERMS whole-word tokens: a query made of them has
    N_TERMS terms. The HEAVY words weigh 100 (above the rank_feature limit of 64)."""
    from spladeray.model import save_idf

    from helpers import tiny_tokenizer

    tokenizer = tiny_tokenizer(splade_tiny)
    words: list[str] = []
    for token in sorted(tokenizer.get_vocab()):
        if len(words) == N_TERMS:
            break
        plain = token.isalpha() and token.islower() and len(token) > 3
        if plain and tokenizer.tokenize(token) == [token]:  # a whole word that stays one token
            words.append(token)
    assert len(words) == N_TERMS
    idf = {w: 1.0 + i / N_TERMS for i, w in enumerate(words)}
    idf.update({w: 100.0 for w in words[-HEAVY:]})
    path = tmp_path_factory.mktemp("idf") / "idf.json"
    save_idf(idf, path)
    return {"words": words, "idf": idf, "path": path}


@pytest.fixture(scope="module")
def app(ray_cluster, serve_url, splade_tiny, doc_only, tmp_path_factory):
    from ray import serve

    from spladeray.serving.app import build_app

    cfg = serve_config(
        splade_tiny,
        tmp_path_factory.mktemp("index"),
        max_document_bytes=4096,
        max_text_chars=50_000,
    )
    cfg.model.doc_only = True
    cfg.model.idf_path = doc_only["path"]
    cfg.model.max_query_length = 4096
    serve._run(build_app(cfg), _blocking=False, name=APP, route_prefix=PREFIX)
    url = serve_url + PREFIX
    wait_healthy(url)
    yield url
    serve.delete(APP)


def test_search_with_more_terms_than_max_clause_count(app, doc_only):
    docs = [
        {"id": "small", "text": "The heart pumps blood through arteries."},
        {"id": "big", "text": "cells " * 2000},  # > 4096 bytes (serve.max_document_bytes)
    ]
    r = httpx.post(f"{app}/index", json={"documents": docs}, timeout=120)
    assert r.status_code == 200, r.text[:500]
    body = r.json()
    assert body["indexed"] == 1
    assert [f["id"] for f in body["failed"]] == ["big"]
    assert "max_document_bytes" in body["failed"][0]["error"]

    words = doc_only["words"]
    query = " ".join(words)
    r = httpx.post(
        f"{app}/search",
        json={"query": query, "size": 3, "explain": True, "fields": False},
        timeout=120,
    )
    assert r.status_code == 200, r.text[:500]
    answer = r.json()
    warnings = {w["code"]: w for w in answer["warnings"]}
    assert warnings["query_terms_pruned"]["count"] == N_TERMS - 1024
    assert str(N_TERMS - 1024) in warnings["query_terms_pruned"]["message"]
    assert warnings["query_weights_clipped"]["count"] == HEAVY
    tokens = answer["query_tokens"]
    assert len(tokens) == 1024
    assert set(tokens) == set(words[-1024:])  # the heaviest IDF weights
    assert max(tokens.values()) == 64.0
    # hybrid: the BM25 leg is cut to what multi_match over two fields may hold
    r = httpx.post(f"{app}/search", json={"query": query, "size": 3, "hybrid": True}, timeout=120)
    assert r.status_code == 200, r.text[:500]
    codes = {w["code"]: w["count"] for w in r.json()["warnings"]}
    assert codes["query_terms_pruned"] == N_TERMS - 1024
    assert codes["lexical_query_truncated"] == N_TERMS - 512
    # a short query is not changed and says so
    r = httpx.post(f"{app}/search", json={"query": words[0], "size": 3}, timeout=60)
    assert r.status_code == 200 and r.json()["warnings"] == []
