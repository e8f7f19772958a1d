"""OpenSearch for tests: the ``osmem-server`` wheel (in-memory, OpenSearch-compatible, no JVM)
started on 127.0.0.1, or a real cluster when ``OPENSEARCH_URL`` is set (opt-in).

Real OpenSearch, one command (security plugin off, plain HTTP on localhost)::

    docker run --rm -p 127.0.0.1:9200:9200 -e discovery.type=single-node \
        -e DISABLE_SECURITY_PLUGIN=true opensearchproject/opensearch:3.3.0
    OPENSEARCH_URL=http://127.0.0.1:9200 .venv/bin/python -m pytest tests/test_opensearch.py

``osmem`` has no ``neural_sparse`` query and no ``sparse_vector`` field: tests for those check
the request bodies we send and carry the ``osmem_gap`` marker.
"""

from __future__ import annotations

import os
import uuid

import pytest

import teardown


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "osmem_gap: osmem lacks the feature; the test checks the request body we send"
    )


@pytest.fixture(scope="session")
def osmem():
    """One osmem-server process for the session, on 127.0.0.1 (a free port)."""
    from osmem_server import OsmemServer

    server = OsmemServer.start(japanese=False, addr="127.0.0.1:0")
    yield server
    teardown.bounded("osmem close", server.close)


@pytest.fixture(
    params=["osmem", pytest.param("real", marks=pytest.mark.opensearch)],
)
def opensearch_url(request) -> str:
    """An empty OpenSearch to write to: an osmem clone, or $OPENSEARCH_URL (opt-in)."""
    if request.param == "real":
        url = os.environ.get("OPENSEARCH_URL")
        if not url:
            pytest.skip("set OPENSEARCH_URL to run against a real OpenSearch")
        yield url
        return
    clone = request.getfixturevalue("osmem").clone()
    yield clone.url
    clone.close()


@pytest.fixture
def index_name() -> str:
    """A fresh index name (tests against a real cluster must not collide)."""
    return f"spladeray-test-{uuid.uuid4().hex[:10]}"


def dead_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def serve_url(ray_cluster) -> str:
    """Ray Serve's HTTP proxy on 127.0.0.1 at a free port (one per session)."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


def serve_config(model_path, index_root, **serve_overrides):
    """A small spladeray config for Serve tests (embedded index unless overridden)."""
    from spladeray.config import parse_config

    serve = {
        "min_replicas": 1,
        "max_replicas": 1,
        "max_batch_size": 16,
        "batch_wait_timeout_s": 0.02,
        "max_documents_per_request": 8,
        "max_request_bytes": 2 * 1024 * 1024,
        "torch_threads": 1,
        "num_cpus": 1,
        "num_gpus": 0,
    }
    index = serve_overrides.pop(
        "index", {"backend": "local", "name": "test", "path": str(index_root)}
    )
    serve.update(serve_overrides)
    return parse_config(
        {
            "model": {"path": str(model_path), "max_document_length": 128, "device": "cpu"},
            "index": index,
            "serve": serve,
        }
    )


def wait_until(url: str, done, timeout: float = 180.0) -> list:
    """Poll ``/healthz`` until ``done(status, json-or-None)``; returns every answer seen."""
    import time

    import httpx

    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/healthz", timeout=5)
            try:
                body = r.json()
            except ValueError:
                body = None
            seen.append((r.status_code, body))
            if done(r.status_code, body):
                return seen
        except httpx.HTTPError as exc:
            seen.append((None, type(exc).__name__))
        time.sleep(0.25)
    raise TimeoutError(f"/healthz never reached the expected state: {seen[-5:]}")


def wait_healthy(url: str, timeout: float = 180.0) -> list:
    """Poll ``/healthz`` until 200; returns every (status, json-or-None) seen on the way."""
    return wait_until(url, lambda status, body: status == 200, timeout)
