"""The Serve app writing to and searching OpenSearch (osmem over HTTP): partial failure; the
backend going away (a fault proxy refusing connections, tests/faultproxy.py) and coming back."""

from __future__ import annotations

import time

import httpx
import pytest
from faultproxy import FaultProxy
from fixtures_osmem import serve_config, wait_healthy

APP = "spladeray-os-test"


@pytest.fixture(scope="module")
def os_app(ray_cluster, serve_url, osmem, splade_tiny, tmp_path_factory):
    from opensearchpy import OpenSearch
    from ray import serve

    from spladeray.serving.app import build_app

    clone = osmem.clone()
    proxy = FaultProxy(clone.url)  # the app reaches the backend through it
    index = {
        "backend": "opensearch",
        "name": "serve-test",
        "opensearch": {
            "hosts": [proxy.url],
            "username_env": None,
            "password_env": None,
            "max_retries": 0,
        },
    }
    cfg = serve_config(splade_tiny, tmp_path_factory.mktemp("unused"), index=index)
    serve.run(build_app(cfg, check_model=False), name=APP, route_prefix="/os")
    url = f"{serve_url}/os"
    wait_healthy(url)
    yield {"url": url, "proxy": proxy, "client": OpenSearch(hosts=[clone.url])}
    serve.delete(APP)
    proxy.close()
    clone.close()


def test_index_partial_failure_lists_bad_document_by_id(os_app):
    docs = [
        {"id": "g1", "title": "Insulin", "text": "Insulin regulates blood glucose."},
        {"id": "bad", "text": 42},
        {"id": "g2", "text": "Neurons transmit electrical signals."},
        {"id": "g3", "text": "Ribosomes synthesise proteins.", "source": "pubmed"},
    ]
    r = httpx.post(f"{os_app['url']}/index", json={"documents": docs}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["indexed"] == 3
    assert [f["id"] for f in body["failed"]] == ["bad"] and body["failed"][0]["error"]
    client = os_app["client"]
    assert client.count(index="serve-test")["count"] == 3
    stored = client.get(index="serve-test", id="g3")["_source"]
    assert stored["source"] == "pubmed" and stored["sparse"]
    r = httpx.post(
        f"{os_app['url']}/search",
        json={"query": "what controls blood sugar", "size": 2, "explain": True},
    )
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert hits[0]["id"] == "g1" and hits[0]["explanation"]
    r = httpx.post(f"{os_app['url']}/search", json={"query": "neurons signals", "hybrid": True})
    assert r.status_code == 200 and r.json()["hits"][0]["id"] == "g2"


def test_backend_down_answers_503_with_retry_after_then_recovers(os_app):
    url, proxy, client = os_app["url"], os_app["proxy"], os_app["client"]
    proxy.set("refuse")  # the cluster goes away under the running app (osmem keeps its data)
    docs = [{"id": "x1", "text": "Anything at all."}, {"id": "x2", "text": "More."}]
    r = httpx.post(f"{url}/index", json={"documents": docs}, timeout=120)
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) > 0
    body = r.json()
    assert "unavailable" in body["error"] and body["indexed"] == 0
    assert {f["id"] for f in body["failed"]} == {"x1", "x2"}
    r = httpx.post(f"{url}/search", json={"query": "anything"}, timeout=120)
    assert r.status_code == 503 and "unavailable" in r.json()["error"]
    assert int(r.headers["retry-after"]) > 0
    assert httpx.get(f"{url}/healthz").status_code == 200  # the model is still fine
    client.indices.refresh(index="serve-test")
    assert not client.exists(index="serve-test", id="x1")  # nothing phantom

    proxy.set("pass")  # the backend returns: the app recovers by itself, no restart
    deadline = time.monotonic() + 60  # a bound, not a timing assertion: usually the first try
    while True:
        r = httpx.post(f"{url}/index", json={"documents": docs}, timeout=120)
        if r.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert r.status_code == 200 and r.json()["indexed"] == 2, r.text
    r = httpx.post(f"{url}/search", json={"query": "anything at all", "size": 5}, timeout=120)
    assert r.status_code == 200 and "x1" in {h["id"] for h in r.json()["hits"]}
