"""The Serve app over real HTTP on the embedded index: contract, bad input, load, health."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest
from fixtures_osmem import serve_config, wait_healthy, wait_until

APP = "spladeray-test"


@pytest.fixture(scope="module")
def app(ray_cluster, serve_url, splade_tiny, tmp_path_factory):
    """One app for the module. The replica is held in "loading" by a gate file until /healthz has
    answered 503 at least once, so the not-ready state is seen however loaded the machine is.
    While no replica runs, the proxy answers /healthz (spladeray.serving.proxy)."""
    from ray import serve

    from spladeray.serving.app import build_app

    cfg = serve_config(splade_tiny, tmp_path_factory.mktemp("index"))
    gate = tmp_path_factory.mktemp("gate") / "load"
    serve._run(build_app(cfg, load_gate=str(gate)), _blocking=False, name=APP, route_prefix="/")
    seen = wait_until(
        serve_url,
        lambda status, body: status == 503 and (body or {}).get("status") == "unavailable",
    )
    gate.touch()
    seen += wait_healthy(serve_url)
    yield {"url": serve_url, "cfg": cfg, "health": seen}
    serve.delete(APP)


@pytest.fixture(scope="module")
def encoder(splade_tiny):
    from spladeray.model import SpladeEncoder

    return SpladeEncoder.from_pretrained(str(splade_tiny), max_document_length=128)


def test_healthz_ready_only_when_model_loaded(app):
    loading = [(s, b) for s, b in app["health"] if s == 503]
    assert loading and all(b["status"] == "unavailable" for _, b in loading), loading
    ready = httpx.get(f"{app['url']}/healthz").json()
    assert ready["status"] == "ok" and ready["encoder"]["random_head"] is False
    # serve.env_vars reach the replica's process (OpenMP and oneDNN read them at start-up);
    # /healthz names the ones in effect, never their values (issue 29)
    assert ready["encoder"]["env"] == ["OMP_WAIT_POLICY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY"]
    assert "PASSIVE" not in json.dumps(ready)
    assert httpx.get(f"{app['url']}/docs").status_code == 200
    spec = httpx.get(f"{app['url']}/openapi.json")
    assert "/encode" in spec.json().get("paths", {}), spec.text[:500]


def test_encode_matches_the_encoder(app, encoder):
    texts = ["Cells divide by mitosis.", "DNA is a double helix."]
    r = httpx.post(f"{app['url']}/encode", json={"texts": texts})
    assert r.status_code == 200, r.text
    got = r.json()["vectors"]
    want = encoder.encode_documents(texts)
    for g, w in zip(got, want, strict=True):
        assert set(g) == set(w)
        assert all(g[t] == pytest.approx(w[t], rel=1e-4, abs=1e-5) for t in w)
    q = httpx.post(f"{app['url']}/encode", json={"texts": ["what is dna"], "kind": "query"})
    assert q.status_code == 200 and q.json()["vectors"][0]


def test_ml_commons_response_shape(app):
    r = httpx.post(f"{app['url']}/encode", json={"texts": ["sunny day"], "format": "ml_commons"})
    body = r.json()
    vector = body["inference_results"][0]["output"][0]["dataAsMap"]["response"][0]
    assert r.status_code == 200 and vector
    r = httpx.post(
        f"{app['url']}/_plugins/_ml/_predict/sparse_encoding/m1", json={"text_docs": ["sunny day"]}
    )
    assert r.json()["inference_results"][0]["output"][0]["dataAsMap"]["response"][0] == vector


BAD = [
    ("/encode", {"texts": []}, 422),
    ("/encode", {"texts": [""]}, 422),
    ("/encode", {"texts": [1, "a"]}, 422),
    ("/encode", {"texts": "not a list"}, 422),
    ("/encode", {"texts": ["a"], "kind": "passage"}, 422),
    ("/encode", {"text": ["typo"]}, 422),
    ("/encode", [1, 2], 422),
    ("/encode", b"{not json", 400),
    ("/encode", {"texts": ["x"] * 9}, 413),
    ("/encode", {"texts": ["x" * (3 * 1024 * 1024)]}, 413),
    ("/index", {"documents": []}, 422),
    ("/index", {"documents": [{"id": str(i), "text": "x"} for i in range(9)]}, 413),
    ("/index", {"documents": [{"id": "a", "text": "x"}], "index": "../etc"}, 422),
    ("/search", {"query": ""}, 422),
    ("/search", {"query": "x", "size": 0}, 422),
    ("/search", {"query": "x", "size": 1000}, 422),
    ("/search", {"query": "x", "index": "test-0abc0abc"}, 404),  # allowed (a version), absent
    ("/search", {"query": "x", "index": "nope"}, 403),  # not in serve.allowed_indices
    ("/index", {"documents": [{"id": "a", "text": "x"}], "index": "nope"}, 403),
]


@pytest.mark.parametrize(
    ("route", "body", "status"), BAD, ids=[f"{r}-{i}" for i, (r, _, _) in enumerate(BAD)]
)
def test_bad_input_is_a_4xx_json_error(app, route, body, status):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(
        f"{app['url']}{route}",
        content=content,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == status, r.text[:300]
    assert isinstance(r.json()["error"], str) and r.json()["error"]


def test_oversized_chunked_upload_is_refused_without_content_length(app):
    def chunks():
        yield b'{"texts": ["'
        for _ in range(40):
            yield b"x" * 65536  # 2.5 MB in total, above the 2 MB limit
        yield b'"]}'

    r = httpx.post(
        f"{app['url']}/encode", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_one_megabyte_text_is_truncated_not_failed(app):
    text = "mitochondria produce energy. " * (1024 * 1024 // 29)
    r = httpx.post(f"{app['url']}/encode", json={"texts": [text, "short"]}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["truncated"] == [0] and r.json()["vectors"][0]


def test_index_search_explain_hybrid(app):
    docs = [
        {"id": "d1", "title": "Mitochondria", "text": "Mitochondria produce ATP for the cell."},
        {"id": "d2", "text": "The heart pumps blood through arteries."},
        {"id": 3, "text": "Photosynthesis turns light into chemical energy in plants."},
        {"id": "bad", "text": ""},
        {"id": "", "text": "no id"},
    ]
    r = httpx.post(f"{app['url']}/index", json={"documents": docs}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["indexed"] == 3
    assert {f["id"] for f in body["failed"]} == {"bad", ""}
    # same id again overwrites
    r = httpx.post(f"{app['url']}/index", json={"documents": [docs[1]]}, timeout=60)
    assert r.json()["indexed"] == 1
    r = httpx.post(
        f"{app['url']}/search",
        json={"query": "what produces ATP in cells", "size": 3, "explain": True},
    )
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert len(hits) == 3 and hits[0]["id"] == "d1"
    assert hits[0]["fields"]["title"] == "Mitochondria"
    contributions = hits[0]["explanation"]
    assert contributions and contributions[0]["contribution"] >= contributions[-1]["contribution"]
    assert sum(c["contribution"] for c in contributions) == pytest.approx(
        hits[0]["score"], rel=1e-3
    )
    r = httpx.post(f"{app['url']}/search", json={"query": "photosynthesis light", "hybrid": True})
    hits = r.json()["hits"]
    assert r.status_code == 200 and hits[0]["id"] == "3" and hits[0]["bm25_score"] > 0


def test_200_concurrent_encodes_all_answered_and_batched(app):
    url = app["url"]
    before = _metric_sum(url, "spladeray_encode_batch_size_count")

    async def run():
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(90.0)) as client:

            async def one(i):
                r = await client.post(
                    f"{url}/encode", json={"texts": [f"document number {i} about cells"]}
                )
                return r.status_code

            return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(200))), 150)

    statuses = asyncio.run(run())
    assert len(statuses) == 200 and set(statuses) <= {200, 503}
    assert statuses.count(200) >= 100
    calls = _metric_sum(url, "spladeray_encode_batch_size_count") - before
    texts = statuses.count(200)
    assert 0 < calls < texts, f"{calls} model calls for {texts} texts: no batching"


def _metric_sum(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(v) for v in re.findall(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M))


def test_metrics_exposed(app):
    text = httpx.get(f"{app['url']}/metrics").text
    for name in (
        "spladeray_documents_encoded_total",
        "spladeray_tokens_total",
        "spladeray_encode_batch_size_bucket",
        "spladeray_documents_indexed_total",
        "spladeray_documents_failed_total",
    ):
        assert name in text


def test_reconfigure_batching_without_restart(app):
    """What Serve calls on a user_config change: batching changes, the replica stays."""
    from ray import serve

    before = httpx.get(f"{app['url']}/healthz").json()["encoder"]
    handle = serve.get_deployment_handle("Encoder", app_name=APP)
    handle.reconfigure.remote({"max_batch_size": 4, "batch_wait_timeout_s": 0.05}).result()
    after = httpx.get(f"{app['url']}/healthz").json()["encoder"]
    assert after["batching"]["max_batch_size"] == 4
    assert after["batching"]["batch_wait_timeout_s"] == 0.05
    assert after["pid"] == before["pid"] and after["loaded_at"] == before["loaded_at"]
    with pytest.raises(Exception, match="unknown encoder user_config"):
        handle.reconfigure.remote({"max_batchsize": 4}).result()
    handle.reconfigure.remote({"max_batch_size": 16, "batch_wait_timeout_s": 0.02}).result()


def test_random_head_model_refused_unless_allowed(splade_tiny, tmp_path):
    from spladeray.model.encoder import RandomHeadError
    from spladeray.serving.app import build_app

    from helpers import build_tiny_base, tiny_tokenizer

    base = tmp_path / "base-only"
    build_tiny_base(tiny_tokenizer(splade_tiny), base)
    cfg = serve_config(base, tmp_path / "idx")
    with pytest.raises(RandomHeadError, match="allow_random_head"):
        build_app(cfg)
    cfg.model.allow_random_head = True
    assert build_app(cfg) is not None  # bound, not deployed


def test_gpus_follow_the_cluster_and_the_driver_checks_the_model_on_cpu(
    ray_cluster, splade_tiny, tmp_path, monkeypatch
):
    from spladeray.raycluster import cluster_gpus
    from spladeray.serving import app as serving_app
    from spladeray.serving import encoder as serving_encoder

    cfg = serve_config(splade_tiny, tmp_path)
    assert serving_app._num_gpus(cfg.serve.model_copy(update={"num_gpus": 2})) == 2.0
    auto = cfg.serve.model_copy(update={"num_gpus": "auto"})
    assert serving_app._num_gpus(auto) == (1.0 if cluster_gpus() > 0 else 0.0)
    seen = []
    real = serving_encoder.load_servable_encoder
    monkeypatch.setattr(
        serving_encoder,
        "load_servable_encoder",
        lambda *a, **kw: seen.append(kw.get("device")) or real(*a, **kw),
    )
    on_auto = cfg.model_copy(update={"model": cfg.model.model_copy(update={"device": "auto"})})
    serving_app.build_app(on_auto)  # bound, not deployed
    assert seen == ["cpu"]  # the driver never moves the model to a GPU
    assert str(real(on_auto, device="cpu").device) == "cpu"
