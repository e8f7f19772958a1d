"""The OpenSearch backend through real opensearch-py over HTTP (osmem, or $OPENSEARCH_URL)."""

from __future__ import annotations

import json
import logging
import math
import random

import pytest
from fixtures_osmem import dead_url

from spladeray.config import OpenSearchConfig
from spladeray.index import opensearch
from spladeray.index.base import IndexUnavailableError, SparseIndex
from spladeray.index.opensearch import (
    OpenSearchIndex,
    build_client,
    escape_token,
    safe_document_vector,
    safe_query_vector,
    unescape_token,
)

TOKENS = ["the", "cell", "##s", ".", "...", "%", "a.b", "100%", "[CLS]", "_x", "dna", "rna"]
TOKENS += [f"tok{i}" for i in range(30)]
PRECISION = 2.0**-8  # FeatureField keeps 9 significant bits


def make_index(url: str, **kwargs) -> OpenSearchIndex:
    cfg = OpenSearchConfig(hosts=[url], username_env=None, password_env=None, **kwargs)
    return OpenSearchIndex.from_config(cfg)


def random_vectors(n: int, seed: int = 0) -> list[dict[str, float]]:
    rng = random.Random(seed)
    return [
        {t: round(rng.uniform(0.05, 3.0), 4) for t in rng.sample(TOKENS, rng.randint(3, 12))}
        for _ in range(n)
    ]


def test_token_escaping_round_trips():
    for token in TOKENS + ["%2E", "%25", "..%.."]:
        escaped = escape_token(token)
        assert "." not in escaped
        assert unescape_token(escaped) == token
    assert len({escape_token(t) for t in ["%2E", "."]}) == 2  # injective


def test_weights_made_safe_for_feature_field():
    vec, problem = safe_document_vector({"a": 1.0, "b": 0.0, "c": 1e-40, "d.e": 2.0})
    assert problem is None and vec == {"a": 1.0, "d%2Ee": 2.0}
    assert safe_document_vector({"a": float("nan")})[1]
    assert safe_document_vector({"a": -1.0})[1]
    assert safe_document_vector({"a": float("inf")})[1]
    assert safe_document_vector({"a": 1e39})[1]
    assert safe_document_vector({"": 1.0})[1]
    q = safe_query_vector({"a": 100.0, "b": 0.0, "c": -1, "d": float("nan"), "": 1, "e": 0.5})
    assert q == {"a": 64.0, "e": 0.5}


def test_create_bulk_overwrite_count_get(opensearch_url, index_name, monkeypatch):
    index = make_index(opensearch_url)
    assert isinstance(index, SparseIndex)
    index.create(index_name)
    index.create(index_name)  # idempotent
    assert index.exists(index_name)
    mapping = index.client.indices.get_mapping(index=index_name)[index_name]["mappings"]
    assert mapping["properties"]["sparse"]["type"] == "rank_features"
    assert mapping["properties"]["text"]["type"] == "text"
    vectors = random_vectors(3)
    fields = [{"title": f"t{i}", "text": f"text {i}"} for i in range(3)]
    result = index.add(index_name, ["a", "b", "c"], vectors, fields)
    assert result.indexed == 3 and result.failed == []
    new = {".": 1.5, "dna": 0.25}
    result = index.add(index_name, ["b"], [new], [{"title": "new", "text": "replaced"}])
    assert result.indexed == 1
    index.refresh(index_name)
    assert index.count(index_name) == 3  # overwritten by id, not duplicated
    assert index.get(index_name, "b") == new  # tokens unescaped on the way out
    assert index.get(index_name, "zzz") is None
    assert index.ids(index_name) == {"a", "b", "c"}
    # a resumed bulk run's per-batch question (_mget), in pieces of MGET_IDS
    monkeypatch.setattr(opensearch, "MGET_IDS", 2)
    assert index.existing(index_name, ["zzz", "c", "a", "y"]) == {"a", "c"}
    assert index.existing(f"{index_name}-missing", ["a"]) == set()
    index.delete(index_name)
    index.delete(index_name)  # idempotent
    assert not index.exists(index_name)


def test_extra_fields_are_stored_but_never_mapped(opensearch_url, index_name):
    """Issue 29 item 7: dynamic: false. A client's field names (/index passes extra fields
    through) stay in _source and come back with a hit, but add no field to the mapping, so random
    names cannot push the index past its field limit."""
    index = make_index(opensearch_url)
    index.create(index_name)
    extras = [
        {"text": f"text {i}", f"random_field_{i}": i, "nested": {f"k{i}": "v"}} for i in range(20)
    ]
    result = index.add(index_name, [f"d{i}" for i in range(20)], random_vectors(20), extras)
    assert result.indexed == 20 and not result.failed
    index.refresh(index_name)
    mapping = index.client.indices.get_mapping(index=index_name)[index_name]["mappings"]
    assert mapping["dynamic"] in (False, "false")
    assert set(mapping["properties"]) == {"sparse", "title", "text"}
    source = index.client.get(index=index_name, id="d3")["_source"]
    assert source["random_field_3"] == 3 and source["nested"] == {"k3": "v"}


def test_search_order_equals_brute_force(opensearch_url, index_name):
    index = make_index(opensearch_url, chunk_size=7)  # several bulk chunks
    vectors = random_vectors(60, seed=1)
    ids = [f"d{i}" for i in range(60)]
    assert index.add(index_name, ids, vectors).indexed == 60
    index.refresh(index_name)
    assert index.count(index_name) == 60
    for qi, query in enumerate(random_vectors(8, seed=2)):
        brute = {
            d: sum(w * v.get(t, 0.0) for t, w in query.items())
            for d, v in zip(ids, vectors, strict=True)
        }
        hits = index.search(index_name, query, size=10)
        assert hits, f"query {qi} found nothing"
        expected = sorted((s for s in brute.values() if s > 0), reverse=True)[: len(hits)]
        for hit, want in zip(hits, expected, strict=True):
            # same score as brute force at FeatureField precision, rank by rank
            assert hit.score == pytest.approx(brute[hit.id], rel=2 * PRECISION)
            assert hit.score == pytest.approx(want, rel=2 * PRECISION)
        for a, b in zip(hits, hits[1:], strict=False):  # order agrees up to the precision
            assert brute[a.id] >= brute[b.id] * (1 - 2 * PRECISION)
        assert "sparse" not in hits[0].fields


def test_partial_bulk_failure_lists_bad_documents_by_id(opensearch_url, index_name):
    index = make_index(opensearch_url)
    index.create(index_name)
    good = {"dna": 1.0}
    result = index.add(
        index_name,
        ["ok1", "nan", "neg", "", "objtitle", "ok2"],
        [good, {"dna": float("nan")}, {"dna": -1.0}, good, good, good],
        [{"text": "x"}, {}, {}, {}, {"title": {"not": "text"}}, {"text": "y"}],
    )
    assert result.indexed == 2
    reasons = {f.id: f.error for f in result.failed}
    assert set(reasons) == {"nan", "neg", "", "objtitle"}
    assert "finite" in reasons["nan"] and ">= 0" in reasons["neg"]
    assert reasons["objtitle"]  # rejected by OpenSearch itself, reason passed through
    index.refresh(index_name)
    assert index.count(index_name) == 2


def test_backend_down_raises_unavailable_and_reports_nothing_indexed():
    index = make_index(dead_url(), max_retries=0)
    index.client.transport.max_retries = 0
    with pytest.raises(IndexUnavailableError) as info:
        index.add("x", ["a", "b"], [{"a": 1.0}, {"b": 1.0}])
    assert info.value.result.indexed == 0
    assert {f.id for f in info.value.result.failed} == {"a", "b"}
    with pytest.raises(IndexUnavailableError):
        index.search("x", {"a": 1.0})
    with pytest.raises(IndexUnavailableError):
        index.count("x")


class _Throttling:
    """Delegates to a real client; the first ``bulk`` answers 429 for one item."""

    def __init__(self, client, always: bool = False):
        self._client = client
        self._always = always
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def bulk(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1 or self._always:
            body = kwargs.get("body", args[0] if args else [])
            lines = body.splitlines() if isinstance(body, str | bytes) else list(body)
            first = lines[0] if isinstance(lines[0], dict) else json.loads(lines[0])
            doc_id = first["index"]["_id"]
            return {
                "errors": True,
                "items": [
                    {
                        "index": {
                            "_id": doc_id,
                            "status": 429,
                            "error": {
                                "type": "es_rejected_execution_exception",
                                "reason": "queue full",
                            },
                        }
                    }
                ],
            }
        return self._client.bulk(*args, **kwargs)


def test_429_items_are_retried_then_reported(opensearch_url, index_name):
    index = make_index(opensearch_url, max_retries=2, initial_backoff_s=0.01)
    index.create(index_name)
    throttling = _Throttling(index.client)
    index.client = throttling
    result = index.add(index_name, ["a"], [{"dna": 1.0}])
    assert result.indexed == 1 and throttling.calls == 2
    index.client = _Throttling(throttling._client, always=True)
    result = index.add(index_name, ["b"], [{"dna": 1.0}])
    assert result.indexed == 0
    assert result.failed[0].id == "b" and "queue full" in result.failed[0].error


@pytest.mark.osmem_gap
def test_neural_sparse_query_body():
    index = OpenSearchIndex(None, query_type="neural_sparse")
    body = index.query_body({"a.b": 2.0, "x": 0.0, "big": 99.0}, size=5)
    assert body["query"] == {
        "neural_sparse": {"sparse": {"query_tokens": {"a%2Eb": 2.0, "big": 64.0}}}
    }
    assert body["size"] == 5 and body["_source"] == {"excludes": ["sparse"]}


@pytest.mark.osmem_gap
def test_sparse_vector_mapping_and_query_body():
    vocab = {"dna": 7, "cell": 11, ".": 3}
    index = OpenSearchIndex(
        None,
        field_type="sparse_vector",
        token_ids=vocab,
        index_settings={"number_of_shards": 1},
        sparse_vector_method={"name": "seismic", "parameters": {"n_postings": 100}},
        neural_sparse_method_parameters={"heap_factor": 1.2},
    )
    body = index.mapping_body()
    assert body["settings"] == {"index": {"sparse": True}, "number_of_shards": 1}
    assert body["mappings"]["properties"]["sparse"] == {
        "type": "sparse_vector",
        "method": {"name": "seismic", "parameters": {"n_postings": 100}},
    }
    query = index.query_body({"dna": 1.5, ".": 0.5, "unknown": 1.0}, size=3)
    assert query["query"] == {
        "neural_sparse": {
            "sparse": {
                "query_tokens": {"7": 1.5, "3": 0.5},
                "method_parameters": {"k": 3, "heap_factor": 1.2},
            }
        }
    }
    actions, failed = index._prepare("i", ["a", "b"], [{"dna": 1.0, ".": 2.0}, {"zzz": 1.0}], None)
    assert actions[0]["_source"]["sparse"] == {"7": 1.0, "3": 2.0}
    assert failed[0].id == "b" and "vocabulary" in failed[0].error
    with pytest.raises(ValueError, match="token_ids"):
        OpenSearchIndex(None, field_type="sparse_vector")


def test_open_index_gives_sparse_vector_the_tokenizer_vocabulary(splade_tiny):
    from transformers import AutoTokenizer

    from spladeray.config import IndexConfig
    from spladeray.index import open_index

    hosts = ["http://127.0.0.1:9"]
    opensearch = {"hosts": hosts, "field_type": "sparse_vector", "username_env": None}
    cfg = IndexConfig(backend="opensearch", opensearch=opensearch)
    with pytest.raises(ValueError, match="tokenizer"):
        open_index(cfg)
    vocab = AutoTokenizer.from_pretrained(splade_tiny).get_vocab()
    assert open_index(cfg, tokenizer=splade_tiny).token_ids == vocab  # a model path
    tokenizer = AutoTokenizer.from_pretrained(splade_tiny)
    assert open_index(cfg, tokenizer=tokenizer).token_ids == vocab  # a loaded tokenizer
    plain = cfg.model_copy(
        update={"opensearch": cfg.opensearch.model_copy(update={"field_type": "rank_features"})}
    )
    assert open_index(plain).token_ids is None  # rank_features needs no vocabulary


def test_protocol_text_search_meta_and_missing_index(opensearch_url, index_name):
    from spladeray.index.base import IndexNotFoundError

    index = make_index(opensearch_url)
    assert isinstance(index, SparseIndex)
    index.create(index_name)
    fields = [{"title": "Cells", "text": "cells divide by mitosis"}, {"text": "the heart pumps"}]
    index.add(index_name, ["c", "h"], [{"cell": 1.0}, {"heart": 1.0}], fields)
    index.refresh(index_name)
    assert [h.id for h in index.text_search(index_name, "mitosis", size=5)] == ["c"]
    many = index.search_many(index_name, [{"heart": 1.0}, {"cell": 2.0}], size=5)
    assert [[h.id for h in hits] for hits in many] == [["h"], ["c"]]
    assert index.resolve_alias(index_name) is None  # a concrete index, no alias
    index.set_index_meta(index_name, {"model_hash": "ab", "model_path": "/m"})
    assert index.index_meta(index_name) == {"model_hash": "ab", "model_path": "/m"}
    [info] = index.list_indices(index_name)
    assert info.name == index_name and info.meta["model_hash"] == "ab" and info.aliases == []
    index.update_alias(f"{index_name}-alias", index_name)
    assert index.resolve_alias(f"{index_name}-alias") == (index_name, info.meta)
    with pytest.raises(IndexNotFoundError):
        index.search(f"{index_name}-missing", {"cell": 1.0})
    assert index.ids(f"{index_name}-missing") == set()
    index.delete(index_name)
    index.close()


def test_rank_feature_query_body():
    body = OpenSearchIndex(None).query_body({"a.b": 2.0, "c": 0.5}, size=4)
    should = body["query"]["bool"]["should"]
    assert should[0] == {"rank_feature": {"field": "sparse.a%2Eb", "linear": {}, "boost": 2.0}}
    assert len(should) == 2
    assert OpenSearchIndex(None).query_body({"x": 0.0}, 3)["query"] == {"match_none": {}}


def test_basic_auth_over_plain_http_warns(caplog):
    """Issue 29 item 9: the password would cross the network unencrypted."""
    env = {"OPENSEARCH_USERNAME": "u", "OPENSEARCH_PASSWORD": "p4ss-word"}
    with caplog.at_level(logging.WARNING):
        build_client(OpenSearchConfig(hosts=["http://search.internal:9200"]), environ=env)
    assert "over plain http://" in caplog.text and "p4ss-word" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build_client(OpenSearchConfig(hosts=["https://search.internal:9200"]), environ=env)
        build_client(OpenSearchConfig(hosts=["http://search.internal:9200"]), environ={})
    assert "plain http" not in caplog.text


def test_connection_security(caplog, monkeypatch):
    secret = "s3cr3t-pa55"
    monkeypatch.setenv("OS_USER", "admin")
    monkeypatch.setenv("OS_PASS", secret)
    cfg = OpenSearchConfig(
        hosts=["https://localhost:9200"], username_env="OS_USER", password_env="OS_PASS"
    )
    assert cfg.verify_certs is True  # on by default
    with caplog.at_level(logging.WARNING):
        client = build_client(cfg)
    assert not caplog.records
    conn = client.transport.get_connection()
    assert conn.session.verify is not False if hasattr(conn, "session") else True
    with caplog.at_level(logging.WARNING):
        index = OpenSearchIndex.from_config(cfg.model_copy(update={"verify_certs": False}))
    assert any("verification is OFF" in r.getMessage() for r in caplog.records)
    assert secret not in caplog.text and secret not in repr(index)
    with pytest.raises(ValueError, match="not allowed"):
        build_client(OpenSearchConfig(hosts=["https://u:p@localhost:9200"]))
    with pytest.raises(ValueError, match="both"):
        monkeypatch.delenv("OS_PASS")
        build_client(cfg)


def test_aws_sigv4_uses_botocores_credential_chain(monkeypatch, tmp_path):
    """Issue 29 item 8: with no keys in the environment, botocore's chain answers (here from a
    shared credentials file, the chain's real code); each request is signed with the
    credentials' current frozen copy, so refreshable role credentials are renewed."""
    import requests
    from opensearchpy import RequestsAWSV4SignerAuth

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    creds = tmp_path / "credentials"
    creds.write_text("[default]\naws_access_key_id = AKIDFROMFILE\naws_secret_access_key = s3\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    cfg = OpenSearchConfig(
        hosts=["https://search.example.com:443"], aws_sigv4=True, aws_region="eu-west-1"
    )
    auth = build_client(cfg).transport.get_connection().session.auth
    assert isinstance(auth, RequestsAWSV4SignerAuth)
    assert auth.signer.credentials.method == "shared-credentials-file"
    signed = auth(requests.Request("GET", "https://search.example.com/_cluster/health").prepare())
    assert "Credential=AKIDFROMFILE/" in signed.headers["Authorization"]
    assert "/eu-west-1/es/aws4_request" in signed.headers["Authorization"]


def test_aws_sigv4_reads_credentials_from_environment(monkeypatch):
    from opensearchpy import RequestsAWSV4SignerAuth

    cfg = OpenSearchConfig(
        hosts=["https://search.example.com:443"], aws_sigv4=True, aws_region="eu-west-1"
    )
    with pytest.raises(ValueError, match="AWS_ACCESS_KEY_ID"):
        build_client(cfg, environ={})
    client = build_client(
        cfg, environ={"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "x" * 20}
    )
    auth = client.transport.get_connection().session.auth
    assert isinstance(auth, RequestsAWSV4SignerAuth)
    assert auth.signer.region == "eu-west-1" and auth.service == "es"
    assert auth.signer.credentials.access_key == "AKIDEXAMPLE"
    assert math.isfinite(cfg.timeout_s)
