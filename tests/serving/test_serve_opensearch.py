"""The Serve app writing to and searching OpenSearch (osmem over HTTP): partial failure, down."""

from __future__ import annotations

import httpx
import pytest
from fixtures_osmem import serve_config, wait_healthy

APP = "spladeray-os-test"


@pytest.fixture(scope="module")
def os_app(ray_cluster, serve_url, osmem, splade_tiny, tmp_path_factory):
    from opensearchpy import OpenSearch
    from ray import serve

    from spladeray.serving.app import build_app

    clone = osmem.clone()
    index = {
        "backend": "opensearch",
        "name": "serve-test",
        "opensearch": {
            "hosts": [clone.url],
            "username_env": None,
            "password_env": None,
            "max_retries": 0,
        },
    }
    cfg = serve_config(splade_tiny, tmp_path_factory.mktemp("unused"), index=index)
    serve.run(build_app(cfg, check_model=False), name=APP, route_prefix="/os")
    url = f"{serve_url}/os"
    wait_healthy(url)
    yield {"url": url, "clone": clone, "client": OpenSearch(hosts=[clone.url])}
    serve.delete(APP)
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


def test_backend_down_index_answers_503_and_nothing_indexed(os_app):
    os_app["clone"].close()  # the cluster goes away under the running app
    docs = [{"id": "x1", "text": "Anything at all."}, {"id": "x2", "text": "More."}]
    r = httpx.post(f"{os_app['url']}/index", json={"documents": docs}, timeout=120)
    assert r.status_code == 503, r.text
    body = r.json()
    assert "unavailable" in body["error"] and body["indexed"] == 0
    assert {f["id"] for f in body["failed"]} == {"x1", "x2"}
    r = httpx.post(f"{os_app['url']}/search", json={"query": "anything"}, timeout=120)
    assert r.status_code == 503 and r.json()["error"]
    assert httpx.get(f"{os_app['url']}/healthz").status_code == 200  # the model is still fine
