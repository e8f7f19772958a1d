"""Bulk writes through a failing OpenSearch: 429s retried, then 503s and dropped connections
reported by id. The fault proxy (tests/faultproxy.py) sits in front of an osmem clone and keeps
the truth: an item answered 429 never reached the backend, so "reported" can be checked
against what the backend really holds."""

from __future__ import annotations

import logging

import pytest
from faultproxy import FaultProxy
from opensearchpy import OpenSearch

from spladeray.config import OpenSearchConfig
from spladeray.index.base import IndexUnavailableError
from spladeray.index.opensearch import OpenSearchIndex

logger = logging.getLogger(__name__)


@pytest.fixture
def backend(osmem):
    """``(proxy, direct client)`` over a fresh osmem clone."""
    clone = osmem.clone()
    proxy = FaultProxy(clone.url)
    yield proxy, OpenSearch(hosts=[clone.url])
    proxy.close()
    clone.close()


def through(proxy: FaultProxy, **kwargs) -> OpenSearchIndex:
    cfg = OpenSearchConfig(
        hosts=[proxy.url], username_env=None, password_env=None, chunk_size=10, **kwargs
    )
    return OpenSearchIndex.from_config(cfg)


def stored(client: OpenSearch, name: str) -> set[str]:
    client.indices.refresh(index=name)
    hits = client.search(index=name, body={"size": 1000, "_source": False})["hits"]["hits"]
    return {h["_id"] for h in hits}


def docs(prefix: str, n: int) -> tuple[list[str], list[dict[str, float]]]:
    ids = [f"{prefix}{i:03d}" for i in range(n)]
    return ids, [{"dna": 1.0 + i % 7, f"t{i % 5}": 0.5} for i in range(n)]


def test_429_items_are_retried_and_the_rest_reported_by_id(backend):
    proxy, client = backend
    index = through(proxy, max_retries=3, initial_backoff_s=0.01, max_backoff_s=0.05)
    index.create("b")
    ids, vectors = docs("a", 60)
    always = {"a005", "a017", "a042"}  # throttled on every attempt: retries run out

    def rule(doc_id: str, attempt: int) -> bool:  # a third of the items 429 at first
        return doc_id in always or (attempt <= 2 and int(doc_id[1:]) % 3 == 0)

    proxy.set("throttle", rule=rule)
    result = index.add("b", ids, vectors)
    retried = proxy.stats["bulk_items_throttled"]
    logger.info("429 injected %d times; reported %d; %s", retried, len(result.failed), proxy.stats)
    assert {f.id for f in result.failed} == always
    assert all("429" in f.error or "queue full" in f.error for f in result.failed)
    assert result.indexed == len(ids) - len(always)
    # the truth: every item counted as indexed is in the backend; no reported one is
    assert stored(client, "b") == set(ids) - always
    assert not always & proxy.forwarded_ids
    # 19 items 429 twice then pass, the 3 others on all 4 attempts (1 + max_retries)
    assert retried == 19 * 2 + 3 * 4


@pytest.mark.parametrize("mode", ["unavailable", "drop"])
def test_503_and_dropped_connections_report_every_unconfirmed_id(backend, mode):
    proxy, client = backend
    index = through(proxy, max_retries=3, initial_backoff_s=0.01)
    index.client.transport.max_retries = 1  # the transport retries 503/connection errors once
    index.create("b")
    ids, vectors = docs("c", 45)
    proxy.set(mode, after_bulk=2)  # two chunks of 10 pass, then the backend fails
    with pytest.raises(IndexUnavailableError) as info:
        index.add("b", ids, vectors)
    result = info.value.result
    assert "unavailable" in str(info.value) and "20 documents were confirmed" in str(info.value)
    assert result.indexed == 20 and len(result.failed) == 25
    assert {f.id for f in result.failed} == set(ids[20:])
    assert stored(client, "b") == set(ids[:20]) == proxy.forwarded_ids
    # the backend returns: writing everything again ends with each id exactly once
    proxy.set("pass")
    again = index.add("b", ids, vectors)
    assert again.indexed == 45 and not again.failed
    assert stored(client, "b") == set(ids)
    assert client.count(index="b")["count"] == 45


def test_refused_connections_then_recovery_without_a_new_client(backend):
    proxy, client = backend
    index = through(proxy, max_retries=0)
    index.client.transport.max_retries = 0
    index.create("b")
    ids, vectors = docs("r", 5)
    proxy.set("refuse")
    with pytest.raises(IndexUnavailableError) as info:
        index.add("b", ids, vectors)
    assert info.value.result.indexed == 0 and len(info.value.result.failed) == 5
    with pytest.raises(IndexUnavailableError):
        index.search("b", {"dna": 1.0})
    proxy.set("pass")
    assert index.add("b", ids, vectors).indexed == 5
    index.refresh("b")
    assert index.count("b") == 5 and stored(client, "b") == set(ids)
