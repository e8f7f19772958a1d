"""Schema-driven fuzzing of the HTTP API with schemathesis, over real HTTP through Ray Serve.

The schema is the app's own ``/openapi.json``, so every documented route is fuzzed: ``/encode``,
``/index``, ``/search``, ``/healthz``, ``/metrics`` and the ML Commons ``_predict`` routes. Cases
fit the schema (positive) or break it (negative: wrong types, missing fields, out-of-range
values). Every response must be no 5xx and conform to the document: a declared status code, a
declared content type, a body matching the declared schema (4xx bodies included).

Bounded for CI: at most :data:`EXAMPLES` cases per operation and mode (fewer where the schema
allows fewer), a fixed seed (``derandomize``: the same cases on every run), no shrinking, no
example database. Hypothesis'
per-example deadline is off (a loaded CI machine must not turn latency into a failure); every
request has a 60 s timeout instead, and the test a pytest timeout.

Real HTTP rather than in-process ASGI: the routes are methods of a Serve deployment (the ingress
calls the encoder deployment through a handle), so only Serve runs the same code as production;
the whole run takes seconds on a tiny model.

Auth is on, as in production (issue 29): the app requires ``$SPLADERAY_TEST_AUTH_TOKEN`` on every
route (``serve_auth.py``) and every case sends it; the 401 without it is checked separately.
"""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
import schemathesis
from fixtures_osmem import serve_config, wait_healthy
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from serve_auth import AUTH, TOKEN_ENV

APP = "spladeray-fuzz"
EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]
OPERATIONS = [
    "GET /healthz",
    "GET /metrics",
    "POST /encode",
    "POST /index",
    "POST /search",
    "POST /_plugins/_ml/_predict/sparse_encoding/{model_id}",
    "POST /_plugins/_ml/_predict/sparse_tokenize/{model_id}",
]
CASES: Counter[str] = Counter()
STATUSES: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzz_url(ray_cluster, serve_url, splade_tiny, tmp_path_factory):
    from ray import serve

    from spladeray.serving.app import build_app

    cfg = serve_config(
        splade_tiny, tmp_path_factory.mktemp("fuzz-index"), bearer_token_env=TOKEN_ENV
    )
    serve.run(build_app(cfg, check_model=False), name=APP, route_prefix="/fuzz")
    url = f"{serve_url}/fuzz"
    wait_healthy(url)
    docs = [  # the default index holds a few documents, so that /search can answer 200
        {"id": f"d{i}", "title": t, "text": f"{t} in cells and tissues"}
        for i, t in enumerate(["insulin", "neurons", "ribosomes", "vitamin d"])
    ]
    r = httpx.post(f"{url}/index", json={"documents": docs}, headers=AUTH, timeout=120)
    assert r.status_code == 200
    yield url
    print("\nfuzz cases per operation:", dict(sorted(CASES.items())))
    print("statuses:", dict(sorted(STATUSES.items())))
    serve.delete(APP)


@pytest.fixture(scope="module")
def api_schema(fuzz_url):
    schema = schemathesis.openapi.from_url(f"{fuzz_url}/openapi.json")
    schema.config.update(base_url=fuzz_url)
    return schema


def _in_limits(case):
    """A valid /search body that also fits the configured limits and the default index (which
    the fixture fills), so that positive cases reach the 200 answer too, not only 404 / 422."""
    if isinstance(case.body, dict):
        case.body.pop("index", None)
        case.body["size"] = int(case.body.get("size", 10)) % 100 + 1
    return case


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("label", "mode"),
    [(label, GenerationMode.POSITIVE) for label in OPERATIONS]
    + [(label, GenerationMode.NEGATIVE) for label in OPERATIONS if label.startswith("POST")],
)  # a GET without parameters has no invalid input
def test_api_conforms_to_its_openapi_document(api_schema, label, mode):
    # hypothesis driven directly per operation: schemathesis' lazy (fixture) pytest loader does
    # not run on this pytest, and an explicit list also checks the document names every route
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in /openapi.json"
    strategy = operation.as_strategy(generation_mode=mode)
    if label == "POST /search" and mode == GenerationMode.POSITIVE:
        strategy = st.one_of(strategy, strategy.map(_in_limits))

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,  # the fixed seed: the same cases on every run
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(case):
        response = case.call_and_validate(checks=CHECKS, timeout=60, headers=AUTH)
        CASES[f"{label} {mode.value}"] += 1
        STATUSES[f"{label} {response.status_code}"] += 1

    run()


def test_the_document_declares_every_route_and_error(fuzz_url):
    doc = httpx.get(f"{fuzz_url}/openapi.json", timeout=30).json()
    paths = doc["paths"]
    for route in ("/encode", "/index", "/search"):
        assert {"200", "400", "401", "413", "422", "503"} <= set(paths[route]["post"]["responses"])
        assert "Retry-After" in paths[route]["post"]["responses"]["503"]["headers"]
    assert set(paths["/healthz"]["get"]["responses"]) == {"200", "503"}
    assert "403" in paths["/index"]["post"]["responses"]
    r = httpx.post(f"{fuzz_url}/encode", json={"texts": ["a"]}, timeout=60)  # no token
    assert r.status_code == 401 and r.json()["error"]
    ml = [p for p in paths if p.startswith("/_plugins/_ml/_predict/")]
    assert len(ml) == 2
    assert "ErrorResponse" in doc["components"]["schemas"]


@pytest.mark.parametrize(
    ("route", "raw", "status"),
    [  # valid JSON that Python strings can hold but UTF-8 cannot (found while fuzzing by hand)
        ("/encode", '{"texts": ["a\\ud800b"]}', 422),
        ("/search", '{"query": "\\udfff"}', 422),
        ("/encode", '{"texts": ["ok"], "\\ud800": 1}', 422),  # the name is echoed in detail
        ("/index", '{"documents": [{"id": "a\\ud800", "text": "x"}]}', 200),
        ("/index", '{"documents": [{"id": "b", "text": "x", "\\ud800": "y"}]}', 422),
        ("/index", '{"documents": [{"id": "c", "text": "x", "score": NaN}]}', 200),
    ],
)
def test_bodies_no_utf8_can_carry_are_4xx_or_failed_by_id(fuzz_url, route, raw, status):
    r = httpx.post(
        f"{fuzz_url}{route}",
        content=raw,
        headers={"content-type": "application/json", **AUTH},
        timeout=60,
    )
    assert r.status_code == status, r.text
    body = r.json()
    if status == 200:
        assert body["indexed"] == 0 and len(body["failed"]) == 1 and body["failed"][0]["error"]
    else:
        assert body["error"]
