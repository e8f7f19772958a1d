"""Schema-driven fuzzing of the HTTP API with schemathesis, over real HTTP through Ray Serve.

The schema is the app's own ``/openapi.json``, so every documented route is fuzzed: ``/encode``,
``/index``, ``/search``, ``/healthz``, ``/metrics`` and the ML Commons ``_predict`` routes. Cases
fit the schema (positive) or break it (negative: wrong types, missing fields, out-of-range
values). Every response must be no 5xx and conform to the document: a declared status code, a
declared content type, a body matching the declared schema (4xx bodies included).

Bounded for CI: :data:`EXAMPLES` cases per operation and mode, a fixed seed
(``deterministic``: the same cases on every run), no shrinking, no example database. Hypothesis'
per-example deadline is off (a loaded CI machine must not turn latency into a failure); every
request has a 60 s timeout instead, and the test a pytest timeout.

Real HTTP rather than in-process ASGI: the routes are methods of a Serve deployment (the ingress
calls the encoder deployment through a handle), so only Serve runs the same code as production;
the whole run takes seconds on a tiny model.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from fixtures_osmem import serve_config, wait_healthy
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

APP = "spladeray-fuzz"
EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]
CASES: Counter[str] = Counter()
STATUSES: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzz_url(ray_cluster, serve_url, splade_tiny, tmp_path_factory):
    from ray import serve

    from spladeray.serving.app import build_app

    cfg = serve_config(splade_tiny, tmp_path_factory.mktemp("fuzz-index"))
    serve.run(build_app(cfg, check_model=False), name=APP, route_prefix="/fuzz")
    url = f"{serve_url}/fuzz"
    wait_healthy(url)
    yield url
    print("\nfuzz cases per operation:", dict(sorted(CASES.items())))
    print("statuses:", dict(sorted(STATUSES.items())))
    serve.delete(APP)


@pytest.fixture(scope="module")
def api_schema(fuzz_url):
    schema = schemathesis.openapi.from_url(f"{fuzz_url}/openapi.json")
    schema.config.update(base_url=fuzz_url)
    schema.config.generation.update(
        modes=["positive", "negative"],
        max_examples=EXAMPLES,
        deterministic=True,
        no_shrink=True,
        database="none",
    )
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.timeout(900)
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_openapi_document(case):
    response = case.call_and_validate(checks=CHECKS, timeout=60)
    label = f"{case.method} {case.path}"
    CASES[label] += 1
    STATUSES[f"{label} {response.status_code}"] += 1


def test_the_document_declares_every_route_and_error(fuzz_url):
    import httpx

    doc = httpx.get(f"{fuzz_url}/openapi.json", timeout=30).json()
    paths = doc["paths"]
    for route in ("/encode", "/index", "/search"):
        assert {"200", "400", "401", "413", "422", "503"} <= set(paths[route]["post"]["responses"])
        assert "Retry-After" in paths[route]["post"]["responses"]["503"]["headers"]
    assert set(paths["/healthz"]["get"]["responses"]) == {"200", "503"}
    ml = [p for p in paths if p.startswith("/_plugins/_ml/_predict/")]
    assert len(ml) == 2
    assert "ErrorResponse" in doc["components"]["schemas"]
