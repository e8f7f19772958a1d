"""Zero-downtime rollout through an alias, against the OpenSearch-compatible test server (osmem).

osmem implements the alias API faithfully for what we use (``POST _aliases`` applied
atomically -- a failing action applies none --, ``GET _alias``, alias/index name clashes,
``_meta`` in mappings), so everything here runs against it; no request body is only unit-tested.
"""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from opensearchpy import OpenSearch
from opensearchpy.exceptions import NotFoundError

from spladeray.index.opensearch import OpenSearchIndex, alias_actions
from spladeray.index.rollout import (
    CountMismatchError,
    RolloutError,
    list_versions,
    model_hash_from_dir,
    model_hash_from_encoder,
    rollback,
    rollout,
    status,
    versioned_name,
)

ALIAS = "docs"
N = 30
HASH_A = "a" * 64
HASH_B = "b" * 64
HASH_C = "c" * 64


@pytest.fixture
def client(osmem):  # osmem: the session server from tests/fixtures_osmem.py
    with osmem.clone() as clone:
        yield OpenSearch(hosts=[clone.url], max_retries=0)


def corpus(n: int = N) -> list[str]:
    return [f"d{i}" for i in range(n)]


def make_build(client, model: str, n: int = N, during=None):
    """A build callable like jobs/index.py's: encodes (here: fake vectors) and bulk-writes."""
    index = OpenSearchIndex(client)

    def build(name: str) -> None:
        ids = corpus(n)
        vectors = [{model: 1.0, f"tok{i % 5}": 0.5 + i / 100} for i in range(n)]
        fields = [{"text": f"document {i} encoded by {model}"} for i in range(n)]
        result = index.add(name, ids, vectors, fields)
        assert result.indexed == n and not result.failed
        if during is not None:
            during(name)

    return index, build


def test_rollout_swap_rollback_and_roll_forward(client):
    index, build_a = make_build(client, "model_a")
    first = rollout(
        index,
        ALIAS,
        HASH_A,
        build=build_a,
        expected_count=N,
        create=index.create,
        meta={"model_path": "/models/a"},
    )
    assert first.swapped and first.index == versioned_name(ALIAS, HASH_A) == "docs-aaaaaaaaaaaa"
    assert first.previous == [] and first.indexed == N
    assert index.alias_targets(ALIAS) == [first.index]
    assert index.resolve_alias(ALIAS) == (
        first.index,
        {"model_hash": HASH_A, "model_path": "/models/a"},
    )
    assert index.search(ALIAS, {"model_a": 1.0}, size=3)[0].fields["text"].endswith("model_a")

    def while_building(name: str) -> None:
        # the new index is complete but not live: readers still get model A through the alias
        assert index.alias_targets(ALIAS) == [first.index]
        assert index.search(ALIAS, {"model_b": 1.0}) == []
        assert index.count(name) >= 0

    _, build_b = make_build(client, "model_b", during=while_building)
    second = rollout(
        index, ALIAS, HASH_B, build=build_b, expected_count=lambda: N, create=index.create
    )
    assert second.swapped and second.previous == [first.index] and second.deleted == []
    assert index.alias_targets(ALIAS) == [second.index]
    assert index.search(ALIAS, {"model_a": 1.0}) == []
    assert len(index.search(ALIAS, {"model_b": 1.0}, size=50)) == N
    assert client.indices.exists(index=first.index)  # kept for rollback

    back = rollback(index, ALIAS)
    assert back.index == first.index and back.previous == [second.index] and back.documents == N
    assert index.alias_targets(ALIAS) == [first.index]
    assert index.resolve_alias(ALIAS)[1]["model_hash"] == HASH_A

    forward = rollback(index, ALIAS, to_index=second.index)
    assert forward.index == second.index
    assert index.alias_targets(ALIAS) == [second.index]
    st = status(index, ALIAS)
    assert st["live"] == [second.index]
    assert [(v["index"], v["documents"], v["live"]) for v in st["versions"]] == [
        (first.index, N, False),
        (second.index, N, True),
    ]


def test_count_mismatch_never_moves_the_alias(client):
    index, build_a = make_build(client, "model_a")
    rollout(index, ALIAS, HASH_A, build=build_a, expected_count=N, create=index.create)
    _, short_build = make_build(client, "model_b", n=N - 2)
    with pytest.raises(CountMismatchError, match=f"holds {N - 2} documents but the source has {N}"):
        rollout(index, ALIAS, HASH_B, build=short_build, expected_count=N, create=index.create)
    assert index.alias_targets(ALIAS) == [versioned_name(ALIAS, HASH_A)]
    # within an explicit tolerance the same build is accepted
    res = rollout(
        index,
        ALIAS,
        HASH_B,
        build=short_build,
        expected_count=N,
        create=index.create,
        count_tolerance=2,
    )
    assert res.swapped and index.alias_targets(ALIAS) == [versioned_name(ALIAS, HASH_B)]


def test_rerun_for_the_live_model_is_a_no_op(client):
    index, build_a = make_build(client, "model_a")
    rollout(index, ALIAS, HASH_A, build=build_a, expected_count=N, create=index.create)
    calls = []
    again = rollout(
        index,
        ALIAS,
        HASH_A,
        build=lambda name: calls.append(name),
        expected_count=N,
        create=index.create,
    )
    assert not again.swapped and calls == [] and again.indexed == N
    with pytest.raises(RolloutError, match="roll back first"):
        rollout(index, ALIAS, HASH_A, build=build_a, expected_count=N, rebuild=True)


def test_old_versions_are_pruned_but_never_the_live_one(client):
    index, _ = make_build(client, "m")
    for h in (HASH_A, HASH_B, HASH_C):
        _, build = make_build(client, f"model_{h[0]}")
        res = rollout(
            index, ALIAS, h, build=build, expected_count=N, create=index.create, keep_previous=1
        )
    assert res.deleted == [versioned_name(ALIAS, HASH_A)]
    names = [v["index"] for v in list_versions(index, ALIAS)]
    assert names == [versioned_name(ALIAS, HASH_B), versioned_name(ALIAS, HASH_C)]
    with pytest.raises(NotFoundError):
        client.count(index=versioned_name(ALIAS, HASH_A))
    # keep_previous=0: nothing to roll back to afterwards
    _, build_a = make_build(client, "model_a")
    rollout(
        index, ALIAS, HASH_A, build=build_a, expected_count=N, create=index.create, keep_previous=0
    )
    assert [v["index"] for v in list_versions(index, ALIAS)] == [versioned_name(ALIAS, HASH_A)]
    with pytest.raises(RolloutError, match="nothing to roll back to"):
        rollback(index, ALIAS)


def test_a_foreign_index_that_looks_like_a_version_is_never_pruned(client):
    """Issue 29 item 4: ``docs-20251207`` (a daily index) and ``docs-abcdef`` without our
    ``_meta`` match ``<alias>-<hex>`` but are not ours: pruning (keep_previous=0) leaves them,
    and rollback neither picks nor accepts them."""
    foreign = ["docs-20251207", "docs-abcdef"]
    for name in foreign:
        client.indices.create(index=name, body={"mappings": {"_meta": {"owner": "logs"}}})
        client.index(index=name, id="x", body={"message": "not ours"}, refresh=True)
    index, _ = make_build(client, "m")
    for h in (HASH_A, HASH_B):
        _, build = make_build(client, f"model_{h[0]}")
        res = rollout(
            index, ALIAS, h, build=build, expected_count=N, create=index.create, keep_previous=0
        )
    assert res.deleted == [versioned_name(ALIAS, HASH_A)]
    for name in foreign:
        assert client.count(index=name)["count"] == 1
    kept = {v["index"]: v["ours"] for v in list_versions(index, ALIAS)}
    assert kept == {
        "docs-20251207": False,
        "docs-abcdef": False,
        versioned_name(ALIAS, HASH_B): True,
    }
    with pytest.raises(RolloutError, match="nothing to roll back to"):
        rollback(index, ALIAS)
    with pytest.raises(RolloutError, match="not a kept version"):
        rollback(index, ALIAS, to_index="docs-20251207")


def test_readers_never_see_a_gap_during_the_swap(client):
    index, build_a = make_build(client, "model_a")
    rollout(index, ALIAS, HASH_A, build=build_a, expected_count=N, create=index.create)
    seen: list[int | str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(int(client.count(index=ALIAS)["count"]))
            except Exception as exc:  # any error is a gap
                seen.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for h in (HASH_B, HASH_C, HASH_A):
            _, build = make_build(client, f"model_{h[0]}")
            rollout(
                index,
                ALIAS,
                h,
                build=build,
                expected_count=N,
                create=index.create,
                keep_previous=2,
            )
        rollback(index, ALIAS)
    finally:
        stop.set()
        thread.join(5)
    assert len(seen) > 10
    assert set(seen) == {N}, [s for s in seen if s != N][:3]


def test_a_concrete_index_named_like_the_alias_is_refused(client):
    client.indices.create(index=ALIAS, body={})
    index, build_a = make_build(client, "model_a")
    with pytest.raises(RolloutError, match="is a concrete index, not an alias"):
        rollout(index, ALIAS, HASH_A, build=build_a, expected_count=N, create=index.create)
    assert client.indices.exists(index=ALIAS) and index.alias_targets(ALIAS) == []


def test_rollback_refuses_unknown_targets(client):
    index, build_a = make_build(client, "model_a")
    rollout(index, ALIAS, HASH_A, build=build_a, expected_count=N, create=index.create)
    with pytest.raises(RolloutError, match="not a kept version"):
        rollback(index, ALIAS, to_index="other-index")
    with pytest.raises(RolloutError, match="already points"):
        rollback(index, ALIAS, to_index=versioned_name(ALIAS, HASH_A))


def test_swap_actions_body():
    assert alias_actions("a", "a-2", ["a-1"]) == [
        {"remove": {"index": "a-1", "alias": "a"}},
        {"add": {"index": "a-2", "alias": "a"}},
    ]
    assert alias_actions("a", "a-2", []) == [{"add": {"index": "a-2", "alias": "a"}}]


def test_model_hash_names(splade_tiny):
    h1 = model_hash_from_dir(splade_tiny, {"pooling": "max", "top_k": None})
    assert h1 == model_hash_from_dir(splade_tiny, {"top_k": None, "pooling": "max"})
    assert h1 != model_hash_from_dir(splade_tiny, {"pooling": "max", "top_k": 64})
    assert versioned_name("scifact", h1) == f"scifact-{h1[:12]}"
    with pytest.raises(ValueError):
        versioned_name("scifact", "NOT-HEX")


def test_model_hash_from_encoder_follows_weights_and_settings(splade_tiny):
    from spladeray.model import SpladeEncoder

    a = SpladeEncoder.from_pretrained(str(splade_tiny))
    b = copy.deepcopy(a)
    assert model_hash_from_encoder(a) == model_hash_from_encoder(b)
    b.top_k = 64
    assert model_hash_from_encoder(a) != model_hash_from_encoder(b)
    b.top_k = None
    with torch.no_grad():
        b.mlm.cls.predictions.decoder.bias[0] += 1.0
    assert model_hash_from_encoder(a) != model_hash_from_encoder(b)
