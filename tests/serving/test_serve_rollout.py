"""The Serve app reading through a rollout alias: queries are encoded by the model that built the
live index (Serve model multiplexing), across a rollout and a rollback, on osmem over HTTP."""

from __future__ import annotations

import json

import httpx
import pytest
from fixtures_osmem import serve_config, wait_healthy
from opensearchpy import OpenSearch

from spladeray.config import parse_config
from spladeray.index import rollout as ro
from spladeray.index.local import LocalIndex
from spladeray.index.opensearch import META_KEY, OpenSearchIndex
from spladeray.serving.api import IndexRoute, IndexRouter
from spladeray.serving.encoder import load_servable_encoder

APP = "spladeray-rollout-test"
ALIAS = "kb"
QUERY = "which proteins do cells make"


def _os(url: str) -> dict:
    return {"hosts": [url], "username_env": None, "password_env": None, "max_retries": 0}


def _rollout_cfg(url, beir, model):
    return parse_config(
        {
            "model": {"path": str(model), "max_document_length": 64},
            "data": {"beir_dir": str(beir)},
            "index": {
                "backend": "opensearch",
                "name": ALIAS,
                "batch_size": 4,
                "actors": 1,
                "opensearch": _os(url),
            },
        }
    )


def _query_vector(encoder) -> dict[str, float]:
    return encoder.to_dicts(encoder.encode_csr([QUERY], "query", batch_size=1))[0]


def _assert_same_vector(got: dict[str, float], want: dict[str, float]) -> None:
    """Equal up to float noise (the replica runs torch with 1 thread, the test with several)."""
    tiny = 1e-3
    assert {t for t, w in got.items() if w > tiny} == {t for t, w in want.items() if w > tiny}
    for t in set(got) & set(want):
        assert got[t] == pytest.approx(want[t], rel=1e-3, abs=1e-5), t


def _search(url: str) -> dict:
    r = httpx.post(f"{url}/search", json={"query": QUERY, "size": 3, "explain": True}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _check_scores(body: dict, index: OpenSearchIndex, query_vector: dict[str, float]) -> None:
    """Each hit's score is the dot product of the query vector with the stored document vector
    (up to the 9-bit precision of OpenSearch feature values)."""
    assert body["hits"]
    for hit in body["hits"]:
        doc = index.get(body["index"], hit["id"])
        dot = sum(w * doc[t] for t, w in query_vector.items() if t in doc)
        assert hit["score"] == pytest.approx(dot, rel=1e-2), hit["id"]


def test_search_follows_the_alias_across_rollout_and_rollback(
    ray_cluster, serve_url, osmem, splade_tiny, tmp_path
):
    from ray import serve

    from spladeray.index.rollout_job import run_rollback, run_rollout
    from spladeray.model import SpladeEncoder
    from spladeray.serving.app import build_app

    beir = tmp_path / "beir"
    beir.mkdir()
    rows = [
        {"_id": f"d{i}", "text": t}
        for i, t in enumerate(
            [
                "Ribosomes in cells synthesise proteins from amino acids.",
                "Insulin regulates blood glucose.",
                "Neurons transmit electrical signals.",
                "Cells divide by mitosis.",
                "Enzymes are proteins that speed up reactions.",
                "The heart pumps blood.",
            ]
        )
    ]
    (beir / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # model B: splade-tiny saved with top_k=8, i.e. a different encoding (and model hash)
    model_b = tmp_path / "model-b"
    SpladeEncoder.from_pretrained(str(splade_tiny), top_k=8).save_pretrained(str(model_b))

    clone = osmem.clone()
    try:
        client = OpenSearch(hosts=[clone.url])
        reader = OpenSearchIndex(client)
        first = run_rollout(_rollout_cfg(clone.url, beir, splade_tiny))
        assert first["swapped"]
        index = {"backend": "opensearch", "name": ALIAS, "opensearch": _os(clone.url)}
        cfg = serve_config(  # model B is saved under tmp_path: a model root of this app
            splade_tiny,
            tmp_path / "unused",
            index=index,
            alias_cache_s=0,
            model_roots=[str(tmp_path)],
        )
        serve.run(build_app(cfg, check_model=False), name=APP, route_prefix="/rollout")
        url = f"{serve_url}/rollout"
        wait_healthy(url)
        enc_a = load_servable_encoder(cfg)
        enc_b = load_servable_encoder(cfg, str(model_b))
        qa, qb = _query_vector(enc_a), _query_vector(enc_b)
        assert len(qa) > 8 >= len(qb)  # the two models encode the query differently

        # model A live: A's query encoding, A's index
        body = _search(url)
        assert body["index"] == first["index"] and body["alias"] == ALIAS
        assert body["model"] == str(splade_tiny)
        _assert_same_vector(body["query_tokens"], qa)
        _check_scores(body, reader, qa)

        # roll out model B: the app now answers with B's query encoding from B's index
        second = run_rollout(_rollout_cfg(clone.url, beir, model_b))
        assert second["swapped"] and second["index"] != first["index"]
        body = _search(url)
        assert body["index"] == second["index"] and body["model"] == str(model_b)
        _assert_same_vector(body["query_tokens"], qb)
        _check_scores(body, reader, qb)
        r = httpx.post(f"{url}/encode", json={"texts": [QUERY], "kind": "query"}, timeout=60)
        assert r.status_code == 200 and r.json()["model"] == str(model_b)
        _assert_same_vector(r.json()["vectors"][0], qb)
        # /index writes go through the alias (the live index only), encoded by the live model
        doc = {"id": "new", "text": "Mitochondria produce energy for cells and proteins."}
        r = httpx.post(f"{url}/index", json={"documents": [doc]}, timeout=60)
        assert r.status_code == 200 and r.json()["indexed"] == 1, r.text
        stored = reader.get(second["index"], "new")
        assert stored and len(stored) <= 8  # B's top_k: B encoded it
        assert reader.get(first["index"], "new") is None

        # roll back: A's index and A's query encoding again
        back = run_rollback(_rollout_cfg(clone.url, beir, splade_tiny))
        assert back["index"] == first["index"]
        body = _search(url)
        assert body["index"] == first["index"] and body["model"] == str(splade_tiny)
        _assert_same_vector(body["query_tokens"], qa)
        _check_scores(body, reader, qa)

        # issue 29 item 6: an index whose _meta names a model outside serve.model_roots, or a
        # model whose hash is not the recorded one, is refused (503 with an error id and no
        # path), not served
        live = first["index"]
        for suffix, model_path in (
            ("e", str(splade_tiny)),  # the configured model is under no root of this app ...
            ("f", str(_random_head(tmp_path / "rh", splade_tiny))),  # ... this one's hash is off
        ):
            bad = f"{ALIAS}-{suffix * 12}"
            reader.create(bad)
            reader.add(bad, ["x"], [{"cells": 1.0}], [{"text": "x"}])
            meta = {"model_hash": suffix * 64, "model_files_sha256": suffix * 64}
            reader.set_index_meta(bad, {**meta, "model_path": model_path + "/"})
            ro.swap_alias(reader, ALIAS, bad, [live])
            live = bad
            r = httpx.post(f"{url}/search", json={"query": QUERY}, timeout=120)
            assert r.status_code == 503 and "error id" in r.json()["error"], r.text
            assert str(tmp_path) not in r.text and "splade-tiny" not in r.text
    finally:
        serve.delete(APP)
        clone.close()


def _random_head(out, splade_tiny):
    """A BERT encoder saved without its masked-LM head: loading it gives a random head."""
    from helpers import build_tiny_base, tiny_tokenizer

    build_tiny_base(tiny_tokenizer(splade_tiny), out)
    return out


# --------------------------------------------------------------------------- IndexRouter, no Ray
class _FakeIndices:
    def __init__(self) -> None:
        self.aliases: dict[str, list[str]] = {}
        self.meta: dict[str, dict] = {}
        self.calls = 0
        self.down = False

    def get_alias(self, name):
        from opensearchpy.exceptions import NotFoundError

        self.calls += 1
        if self.down:
            raise ConnectionError("down")
        if name not in self.aliases:
            raise NotFoundError(404, "alias_not_found", {})
        return {index: {"aliases": {name: {}}} for index in self.aliases[name]}

    def get_mapping(self, index):
        meta = self.meta.get(index)
        return {index: {"mappings": {"_meta": {META_KEY: meta}} if meta else {}}}


class _FakeClient:
    def __init__(self) -> None:
        self.indices = _FakeIndices()


def test_index_router_resolves_caches_and_falls_back(tmp_path):
    backend = OpenSearchIndex(_FakeClient())
    indices = backend.client.indices
    now = [0.0]
    router = IndexRouter(backend, "/models/a", ttl_s=5.0, clock=lambda: now[0])
    assert router.resolve("plain") == IndexRoute("plain")  # not an alias
    indices.aliases["kb"] = ["kb-aaaaaa"]
    indices.meta["kb-aaaaaa"] = {"model_hash": "a", "model_path": "/models/a"}
    assert router.resolve("kb") == IndexRoute("kb-aaaaaa", "", "kb")  # the configured model
    indices.aliases["kb"] = ["kb-bbbbbb"]
    indices.meta["kb-bbbbbb"] = {
        "model_hash": "b",
        "model_path": "/models/b",
        "model_files_sha256": "fb",
    }
    calls = indices.calls
    assert router.resolve("kb") == IndexRoute("kb-aaaaaa", "", "kb")  # cached
    assert indices.calls == calls
    now[0] = 5.1
    assert router.resolve("kb") == IndexRoute("kb-bbbbbb", "/models/b", "kb", "fb")
    indices.down = True
    now[0] = 20.0
    assert router.resolve("kb") == IndexRoute("kb-bbbbbb", "/models/b", "kb", "fb")  # stale
    assert router.resolve("other") == IndexRoute("other")  # nothing known: the name itself
    indices.down = False
    indices.aliases["kb"] = ["kb-cccccc"]  # an alias without _meta: the configured model
    assert router.resolve("kb") == IndexRoute("kb-cccccc", "", "kb")
    indices.aliases["multi"] = ["x1", "x2"]  # several targets: not a rollout alias
    assert router.resolve("multi") == IndexRoute("multi")
    router.max_entries = 3  # bounded (issue 29 item 13): the oldest name is dropped
    for name in ("n1", "n2", "n3", "n4"):
        router.resolve(name)
    assert len(router._cache) == 3 and "n4" in router._cache
    local = LocalIndex(tmp_path)  # the embedded index has no aliases
    assert IndexRouter(local, "/models/a", 5.0).resolve("kb") == IndexRoute("kb")


def test_model_by_path_gets_the_random_head_check(splade_tiny, tmp_path):
    from spladeray.model.encoder import RandomHeadError

    cfg = serve_config(splade_tiny, tmp_path)
    with pytest.raises(RandomHeadError):
        load_servable_encoder(cfg, str(_random_head(tmp_path / "rh", splade_tiny)))
    allowed = cfg.model_copy(
        update={"model": cfg.model.model_copy(update={"allow_random_head": True})}
    )
    assert load_servable_encoder(allowed, str(tmp_path / "rh")).random_head


def test_a_served_model_must_be_under_a_root_and_match_its_hash(splade_tiny, tmp_path):
    """Issue 29 item 6, without Ray: the root check (symlinks and .. resolved) and the hash."""
    from spladeray.serving.security import check_model_path, model_roots, verify_model_hash

    cfg = serve_config(splade_tiny, tmp_path)
    assert model_roots(cfg) == [str(splade_tiny.parent)]
    assert check_model_path(str(splade_tiny), model_roots(cfg)) is None
    for outside in ("/etc", f"{splade_tiny.parent}/../../../etc", f"{splade_tiny.parent}x/m"):
        assert "serve.model_roots" in check_model_path(outside, model_roots(cfg))
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to("/etc")
    assert check_model_path(str(root / "link"), [str(root)]) is not None  # a symlink out
    right = ro.model_hash_from_dir(splade_tiny)
    verify_model_hash(str(splade_tiny), right)
    for wrong in ("0" * 64, None):
        with pytest.raises(ValueError, match="model_files_sha256|is not the index's"):
            verify_model_hash(str(splade_tiny), wrong)
