"""The bearer token over real HTTP (issue 14, item 2; issue 29: every route by default).

The app protects every route by default (``serve.protect`` defaults to all of them): a missing or
wrong token is a 401, the right one a 200, and a token in the query string is refused even when
it is the right one. The token is never in a response body or header, nor in any log file of
the Ray session (the replicas', the proxy's, the controller's).

The token reaches the ingress replica the way the docs say: through the environment where Ray
runs, never through the config or a runtime_env. It is set when this module is imported, i.e.
at collection, before the session's Ray cluster starts, so the raylet and every worker have it.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from fixtures_osmem import serve_config, wait_healthy
from serve_auth import TOKEN, TOKEN_ENV

APP = "spladeray-auth"
PREFIX = "/auth"
GOOD = {"authorization": f"Bearer {TOKEN}"}

DOC = {"documents": [{"id": "a1", "text": "Mitochondria produce ATP for the cell."}]}
ROUTES = [
    ("/index", DOC),
    ("/search", {"query": "what produces ATP", "size": 3}),
    ("/encode", {"texts": ["what produces ATP"], "kind": "query"}),
    ("/_plugins/_ml/_predict/sparse_encoding/m1", {"text_docs": ["sunny day"]}),
]
WRONG = [
    {},
    {"authorization": "Bearer nope"},
    {"authorization": f"Bearer {TOKEN}x"},
    {"authorization": f"Bearer {TOKEN[:-1]}"},
    {"authorization": f"Basic {TOKEN}"},
    {"authorization": TOKEN},
    {"authorization": "Bearer"},
]


@pytest.fixture(scope="module")
def app(ray_cluster, serve_url, splade_tiny, tmp_path_factory):
    from ray import serve

    from spladeray.serving.app import build_app

    cfg = serve_config(  # serve.protect left at its default: every route
        splade_tiny,
        tmp_path_factory.mktemp("index"),
        bearer_token_env=TOKEN_ENV,
        env_vars={"OMP_WAIT_POLICY": "PASSIVE", "HF_TOKEN": "hf_secret_value_not_for_healthz"},
    )
    assert cfg.serve.protect == ["encode", "index", "search"]
    assert TOKEN not in cfg.model_dump_json()
    serve._run(build_app(cfg), _blocking=False, name=APP, route_prefix=PREFIX)
    url = serve_url + PREFIX
    wait_healthy(url)
    responses: list[httpx.Response] = []
    yield {"url": url, "responses": responses}
    serve.delete(APP)


def _post(app, route: str, body, headers=None, params=None) -> httpx.Response:
    r = httpx.post(
        f"{app['url']}{route}", json=body, headers=headers or {}, params=params, timeout=60
    )
    app["responses"].append(r)
    return r


def _unauthorized(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text[:300]
    assert r.headers["www-authenticate"] == "Bearer"
    assert isinstance(r.json()["error"], str)


@pytest.mark.parametrize("route", [r for r, _ in ROUTES])
def test_missing_or_wrong_token_is_401(app, route):
    body = dict(ROUTES)[route]
    for headers in WRONG:
        _unauthorized(_post(app, route, body, headers))


def test_right_token_is_200_and_health_stays_open(app):
    for route, body in ROUTES:
        r = _post(app, route, body, GOOD)
        assert r.status_code == 200, (route, r.text[:300])
    hits = _post(app, "/search", dict(ROUTES)["/search"], GOOD).json()["hits"]
    assert [h["id"] for h in hits] == ["a1"]
    assert httpx.get(f"{app['url']}/healthz").status_code == 200
    assert httpx.get(f"{app['url']}/docs").status_code == 200


def test_healthz_names_env_keys_only_and_path_and_pid_need_the_token(app):
    """Issue 29 item 3: serve.env_vars values never; the model path and pid with the token."""
    anonymous = httpx.get(f"{app['url']}/healthz")
    authed = httpx.get(f"{app['url']}/healthz", headers=GOOD)
    app["responses"] += [anonymous, authed]
    for r in (anonymous, authed):
        assert r.status_code == 200
        assert "hf_secret_value_not_for_healthz" not in r.text and "PASSIVE" not in r.text
        assert r.json()["encoder"]["env"] == ["HF_TOKEN", "OMP_WAIT_POLICY"]
    assert "pid" not in anonymous.json()["encoder"] and "model" not in anonymous.json()["encoder"]
    assert "splade-tiny" not in anonymous.text
    assert isinstance(authed.json()["encoder"]["pid"], int)
    assert authed.json()["encoder"]["model"].endswith("splade-tiny")


def test_an_index_outside_allowed_indices_is_403_naming_the_setting(app):
    """Issue 29 item 2: with the right token, /index and /search may still name only the
    configured index, its alias and versions; nothing is created or read elsewhere."""
    for route, body in (
        ("/index", {**DOC, "index": "someone-elses"}),
        ("/search", {"query": "what produces ATP", "index": "someone-elses"}),
        ("/search", {"query": "what produces ATP", "index": "test-2025x"}),  # not a version
    ):
        r = _post(app, route, body, GOOD)
        assert r.status_code == 403, r.text[:300]
        assert "serve.allowed_indices" in r.json()["error"]
    version = _post(app, "/index", {**DOC, "index": "test-0123456789ab"}, GOOD)
    assert version.status_code == 200 and version.json()["indexed"] == 1
    r = _post(app, "/search", {"query": "what produces ATP", "index": "someone-elses"}, GOOD)
    assert r.status_code == 403  # still refused after a write elsewhere was refused


@pytest.mark.parametrize("param", ["token", "access_token"])
def test_token_in_the_query_string_is_refused(app, param):
    for route, body in ROUTES:
        _unauthorized(_post(app, route, body, params={param: TOKEN}))
        # refused even beside the right header: a token in a URL ends up in logs and histories
        r = _post(app, route, body, GOOD, params={param: TOKEN})
        _unauthorized(r)
        assert "URL" in r.json()["error"]


def test_token_never_in_a_response_or_a_log_line(app):
    """Runs last in the module: every response of the tests above, and every log file."""
    import ray

    responses = app["responses"]
    assert len(responses) > 40
    for r in responses:
        assert TOKEN not in r.text
        assert all(TOKEN not in v for v in r.headers.values())
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    deadline = time.monotonic() + 60
    while True:  # the access log lines of the 401s show the replicas' logs are the ones read
        texts = {p: p.read_bytes() for p in logs.rglob("*") if p.is_file()}
        if any(b"401" in t and b"index" in t for t in texts.values()):
            break
        assert time.monotonic() < deadline, "no access log line of a 401 in the session logs"
        time.sleep(1)
    leaked = [str(p) for p, t in texts.items() if TOKEN.encode() in t]
    assert leaked == []
