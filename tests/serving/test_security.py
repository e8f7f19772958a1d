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
