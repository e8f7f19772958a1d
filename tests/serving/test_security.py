"""Security defaults: TLS verification on unless explicitly (and loudly) turned off, credentials
only from the environment, constant-time bearer check on the protected routes (``serve.protect``,
default /index; never a token from the URL), no secret in logs or errors. The same check over
real HTTP, with the Ray session's logs grepped: ``tests/serving/test_auth_http.py``.

The OpenSearch connection is built by ``spladeray.index.opensearch.build_client`` (used by the
index backend, jobs/index.py and jobs/export.py --register); ML Commons calls go through
``spladeray.mlcommons`` on top of that client.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from spladeray.config import ConfigError, OpenSearchConfig, parse_config
from spladeray.index.opensearch import build_client
from spladeray.mlcommons import MLCommonsClient, MLCommonsError, redact, redact_url

from helpers import ROOT

SECRET = "hunter2-Sup3r-Secret"
ENV = {"OPENSEARCH_USERNAME": "spladeray", "OPENSEARCH_PASSWORD": SECRET}
SECRET_FORMS = (SECRET, base64.b64encode(f"spladeray:{SECRET}".encode()).decode())


def _no_secret(text: str) -> None:
    for form in SECRET_FORMS:
        assert form not in text


def test_tls_verification_is_on_by_default():
    cfg = OpenSearchConfig()
    assert cfg.verify_certs is True
    assert cfg.hosts[0].startswith("https://")
    client = build_client(cfg, environ={})
    conn = client.transport.get_connection()
    assert conn.pool.cert_reqs == "CERT_REQUIRED"


def test_turning_verification_off_needs_the_flag_and_warns(caplog):
    caplog.set_level(logging.WARNING)
    cfg = OpenSearchConfig(hosts=["https://search.internal:9200"], verify_certs=False)
    client = build_client(cfg, environ={})
    assert client.transport.get_connection().pool.cert_reqs == "CERT_NONE"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("verification is OFF" in r.getMessage() for r in warnings)


def test_credentials_come_only_from_the_environment(caplog):
    caplog.set_level(logging.DEBUG)
    # no config key can hold a secret ...
    for key in ("password", "username", "http_auth", "api_key"):
        with pytest.raises(ConfigError, match=key):
            parse_config({"model": {"path": "m"}, "index": {"opensearch": {key: SECRET}}})
    # ... nor can a host URL
    with pytest.raises(ValueError, match="not allowed") as err:
        build_client(OpenSearchConfig(hosts=[f"https://admin:{SECRET}@search:9200"]), environ={})
    _no_secret(str(err.value))
    # the named environment variables are read
    client = build_client(OpenSearchConfig(), environ=ENV)
    auth = client.transport.get_connection().headers["authorization"]
    assert auth == "Basic " + SECRET_FORMS[1]
    _no_secret(repr(client) + repr(client.transport.get_connection()))
    # half a credential is an error that names the variables, not values
    with pytest.raises(ValueError) as err:
        build_client(OpenSearchConfig(), environ={"OPENSEARCH_PASSWORD": SECRET})
    assert "OPENSEARCH_USERNAME" in str(err.value)
    _no_secret(str(err.value))
    _no_secret(caplog.text)


def test_no_secret_in_logs_or_errors_of_a_failing_ml_commons_call(caplog):
    """A 401 from the cluster and an unreachable cluster, both with basic auth configured."""
    caplog.set_level(logging.DEBUG)
    seen_auth: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen_auth.append(self.headers.get("Authorization", ""))
            body = json.dumps(
                {
                    "error": {
                        "root_cause": [{"type": "security_exception", "reason": "Unauthorized"}],
                        "type": "security_exception",
                        "reason": "Unauthorized",
                    },
                    "status": 401,
                }
            ).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        client = build_client(OpenSearchConfig(hosts=[url]), environ=ENV)
        with pytest.raises(MLCommonsError) as err:
            MLCommonsClient(client).get_model("abc")
        assert err.value.status == 401 and "Unauthorized" in str(err.value)
        assert seen_auth == ["Basic " + SECRET_FORMS[1]]  # sent, but only on the wire
        _no_secret(str(err.value) + repr(err.value))
    finally:
        server.shutdown()
        server.server_close()
    dead = build_client(OpenSearchConfig(hosts=["http://127.0.0.1:9"], timeout_s=2), environ=ENV)
    with pytest.raises(MLCommonsError) as err:
        MLCommonsClient(dead).get_task("t")
    _no_secret(str(err.value))
    _no_secret(caplog.text)


def test_presigned_model_urls_are_redacted():
    url = f"https://u:{SECRET}@bucket.s3.amazonaws.com/m.zip?X-Amz-Signature={SECRET}&v=1"
    assert (
        redact_url(url)
        == "https://bucket.s3.amazonaws.com/m.zip?X-Amz-Signature=REDACTED&v=REDACTED"
    )
    _no_secret(redact(f"cannot download {url}: 403"))
    err = MLCommonsError("register model", f"failed to fetch {url}")
    _no_secret(str(err))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pydantic v1-style fields in ray.serve
def test_bearer_token_on_index_is_checked_in_constant_time(monkeypatch):
    """The Serve app's /index check (spladeray.serving.api): hmac.compare_digest, 401 otherwise."""
    import hmac

    from fastapi import HTTPException
    from starlette.requests import Request

    from spladeray.serving.api import EncoderIngress

    check = EncoderIngress.func_or_class._check_token
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))

    def request(header: str | None, query: str = "") -> Request:
        headers = [(b"authorization", header.encode())] if header is not None else []
        scope = {"type": "http", "method": "POST", "path": "/index", "headers": headers}
        return Request(scope | {"query_string": query.encode()})

    owner = SimpleNamespace(_token=SECRET.encode())
    check(owner, request(f"Bearer {SECRET}"))
    assert calls  # compared with hmac.compare_digest
    for bad in (None, "Bearer nope", f"Basic {SECRET}", f"Bearer {SECRET}x"):
        with pytest.raises(HTTPException) as err:
            check(owner, request(bad))
        assert err.value.status_code == 401
        _no_secret(str(err.value.detail))
    for query in (f"token={SECRET}", f"access_token={SECRET}"):  # never from the URL
        for header in (None, f"Bearer {SECRET}"):
            with pytest.raises(HTTPException) as err:
                check(owner, request(header, query))
            assert err.value.status_code == 401 and "URL" in err.value.detail
            _no_secret(str(err.value.detail))
    check(SimpleNamespace(_token=None), request(None))  # no token configured: open

    # serve.protect: only the listed routes ask for the token
    authorize = EncoderIngress.func_or_class._authorize
    guard = SimpleNamespace(_token=SECRET.encode(), _protected=frozenset({"index", "search"}))
    guard._check_token = lambda r: check(guard, r)
    authorize(guard, request(None), "encode")
    authorize(guard, request(f"Bearer {SECRET}"), "search")
    for route in ("index", "search"):
        with pytest.raises(HTTPException):
            authorize(guard, request(None), route)


def test_ray_cluster_config_and_docs_hold_no_secret():

    root = ROOT
    for path in (root / "cluster.yaml", root / "docs" / "production.md"):
        text = path.read_text()
        assert "OPENSEARCH_PASSWORD=" not in text.replace("OPENSEARCH_PASSWORD=...", "")
        assert "runtime-env-json" not in text or "visible" in text


# ---------------------------------------------------------------------------- issue 29: defaults
def test_the_default_config_protects_every_route_with_a_named_token_env():
    from spladeray.config import ServeConfig, load_config

    assert ServeConfig().protect == ["encode", "index", "search"]
    assert ServeConfig().bearer_token_env == "SPLADERAY_API_TOKEN"
    shipped = load_config(ROOT / "configs" / "serve.yaml").serve
    assert shipped.bearer_token_env == "SPLADERAY_API_TOKEN"
    assert shipped.protect == ["encode", "index", "search"]
    for key, value in (("host", "0.0.0.0"), ("port", 8000)):  # never read: removed, with a hint
        with pytest.raises(ConfigError, match="http_options"):
            parse_config({"model": {"path": "m"}, "serve": {key: value}})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.7", False),
        ("search.internal", False),
        (None, False),  # unknown: fail closed
    ],
)
def test_an_open_api_is_refused_on_a_non_loopback_bind(host, loopback, caplog):
    """Issue 29 item 1: no token -> open (one loud WARNING line) on loopback, refused elsewhere;
    a token set -> the protected routes need it, whatever the bind."""
    from spladeray.config import ServeConfig
    from spladeray.serving.security import InsecureBindError, resolve_access

    cfg = ServeConfig()
    caplog.set_level(logging.WARNING, logger="spladeray.serving.security")
    for environ in ({}, {"SPLADERAY_API_TOKEN": ""}):
        if loopback:
            access = resolve_access(cfg, host, environ)
            assert access.token is None and access.protected == frozenset()
        else:
            with pytest.raises(InsecureBindError, match="SPLADERAY_API_TOKEN"):
                resolve_access(cfg, host, environ)
    loud = [r for r in caplog.records if "API OPEN" in r.getMessage()]
    assert len(loud) == (2 if loopback else 0)
    access = resolve_access(cfg, host, {"SPLADERAY_API_TOKEN": SECRET})
    assert access.token == SECRET.encode()
    assert access.protected == frozenset({"encode", "index", "search"})
    assert SECRET not in caplog.text


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pydantic v1-style fields in ray.serve
def test_a_replica_on_a_public_bind_without_token_refuses_before_loading(monkeypatch):
    """The ingress asks Serve for its bind (here: 0.0.0.0) and fails before any model loads."""
    from spladeray.serving import api
    from spladeray.serving.security import InsecureBindError

    ingress = api.EncoderIngress.func_or_class.__mro__[1]  # the class under Serve's ASGI wrapper
    assert ingress.__name__ == "EncoderIngress"
    names = ingress.__init__.__globals__  # Serve's ingress holds a copy of the module's globals
    monkeypatch.setitem(names, "proxy_bind_host", lambda: "0.0.0.0")
    monkeypatch.setitem(names, "BatchedEncoder", lambda *a: pytest.fail("the model was loaded"))
    cfg = parse_config({"model": {"path": "m"}})
    with pytest.raises(InsecureBindError, match="refusing to serve an open API on 0.0.0.0"):
        ingress.__init__(object.__new__(ingress), cfg)


def test_allowed_indices_default_and_explicit():
    """Issue 29 item 2: index.name, the rollout alias and <alias>-<hex> versions by default."""
    from spladeray.serving.security import IndexAllowList

    cfg = parse_config({"model": {"path": "m"}, "index": {"name": "docs"}})
    allow = IndexAllowList(cfg.index, cfg.serve.allowed_indices)
    for name in ("docs", "docs-0123abcd", "docs-" + "f" * 64):
        assert allow.refusal(name) is None
    for name in ("other", "docs-logs", "docs-12345", "docs2", "docs-0123abcd-x"):
        assert "serve.allowed_indices" in allow.refusal(name)
    cfg = parse_config(
        {
            "model": {"path": "m"},
            "index": {"name": "docs", "rollout": {"alias": "live"}},
            "serve": {"allowed_indices": ["docs", "tenant-*"]},
        }
    )
    allow = IndexAllowList(cfg.index, cfg.serve.allowed_indices)
    assert allow.refusal("tenant-a") is None and allow.refusal("live") is not None
    assert IndexAllowList(cfg.index, None).refusal("live-abcdef") is None


def test_error_ids_keep_backend_detail_out_of_the_message(caplog):
    """Issue 29 item 10: a 503's message has an id; hosts and paths are only in the log."""
    from spladeray.serving.security import incident

    caplog.set_level(logging.WARNING, logger="spladeray.serving.security")
    detail = "ConnectionError(https://search.internal:9200) /models/secret-path"
    message = incident("the index backend is unavailable", RuntimeError(detail))
    assert "search.internal" not in message and "secret-path" not in message
    error_id = message.split("error id ")[1].split(";")[0]
    assert any(error_id in r.getMessage() and detail in r.getMessage() for r in caplog.records)


def test_trusted_hosts_and_docs_switch():
    """Issue 29 item 13: serve.trusted_hosts (400 for another Host), serve.docs: false (404 on
    /docs and /redoc, which load a CDN's scripts); the defaults let everything through."""
    import asyncio

    import httpx

    from spladeray.serving.security import RequestGate

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def get(settings, path, host):
        transport = httpx.ASGITransport(app=RequestGate(app, lambda: settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            return await client.get(path, headers={"host": host})

    def status(settings, path="/healthz", host="search.example.com"):
        return asyncio.run(get(settings, path, host)).status_code

    assert status((None, True)) == 200 and status((None, True), "/docs") == 200
    assert status((["search.example.com", "*.internal"], True)) == 200
    assert status((["search.example.com", "*.internal"], True), host="a.internal:8000") == 200
    r = asyncio.run(get((["search.example.com"], True), "/healthz", "evil.example"))
    assert r.status_code == 400 and "serve.trusted_hosts" in r.json()["error"]
    for path in ("/docs", "/redoc"):
        assert status((None, False), path) == 404
    assert status((None, False), "/openapi.json") == 200
    parse_config({"model": {"path": "m"}, "serve": {"trusted_hosts": ["a"], "docs": False}})
