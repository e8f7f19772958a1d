"""The proxy middleware's deadlines (:mod:`spladeray.serving.proxy`), on plain ASGI apps.

These drive :class:`ReplicaLossMiddleware` around small ASGI apps that stand for Serve's proxy:
one that never answers (what Ray Serve 2.60's router does to a request it lost while a replica
died, which no test can provoke on purpose), one that answers slowly after starting, one that
returns without answering (the proxy after a replica's death). The same middleware runs in the
real proxy in ``test_replica_loss.py`` and ``test_serve.py``.
"""

from __future__ import annotations

import asyncio
import json

from spladeray.serving.proxy import RESPONSE_DEADLINE_ENV, ReplicaLossMiddleware, proxy_middlewares


def _scope(method: str, path: str) -> dict:
    return {"type": "http", "method": method, "path": path, "headers": []}


async def _receive() -> dict:
    return {"type": "http.request", "body": b"", "more_body": False}


def _call(app, method: str = "POST", path: str = "/encode") -> list[dict]:
    sent: list[dict] = []

    async def send(message) -> None:
        sent.append(message)

    asyncio.run(app(_scope(method, path), _receive, send))
    return sent


def _status_body(sent: list[dict]) -> tuple[int, dict, dict]:
    (start, body) = sent
    headers = dict(start["headers"])
    return start["status"], headers, json.loads(body["body"])


class NeverAnswers:
    """Waits forever, as a request the router lost does; records that it was cancelled."""

    def __init__(self) -> None:
        self.cancelled = False

    async def __call__(self, scope, receive, send) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def _slow_body(scope, receive, send) -> None:
    """Starts its response at once, then takes 10x the deadline below to finish it."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await asyncio.sleep(0.5)
    await send({"type": "http.response.body", "body": b'{"ok": true}'})


async def _answers_nothing(scope, receive, send) -> None:
    """Serve's proxy when the replica died under the request: it returns, having sent nothing."""


def test_a_request_no_replica_starts_to_answer_gets_503_at_the_deadline():
    inner = NeverAnswers()
    app = ReplicaLossMiddleware(inner, retry_after_s=3, response_deadline_s=0.05)
    status, headers, body = _status_body(_call(app))
    assert status == 503 and headers[b"retry-after"] == b"3"
    assert "no replica answered within 0.05s" in body["error"] and "retry" in body["error"]
    assert inner.cancelled  # the proxy's handling was cancelled: Serve drops the request


def test_a_started_response_is_never_cut_by_the_deadline():
    app = ReplicaLossMiddleware(_slow_body, response_deadline_s=0.05)
    sent = _call(app)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200 and sent[1]["body"] == b'{"ok": true}'


def test_healthz_has_its_own_shorter_deadline_and_says_unavailable():
    app = ReplicaLossMiddleware(NeverAnswers(), healthz_timeout_s=0.05, response_deadline_s=None)
    status, headers, body = _status_body(_call(app, "GET", "/prefix/healthz"))
    assert status == 503 and headers[b"retry-after"] == b"1"
    assert body["status"] == "unavailable" and "0.05s" in body["error"]


def test_without_a_deadline_a_slow_answer_still_arrives():
    async def answers_late(scope, receive, send) -> None:
        await asyncio.sleep(0.2)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late"})

    for off in (None, 0):
        sent = _call(ReplicaLossMiddleware(answers_late, response_deadline_s=off))
        assert sent[0]["status"] == 200 and sent[1]["body"] == b"late"


def test_a_lost_replica_is_503_at_once_not_at_the_deadline():
    app = ReplicaLossMiddleware(_answers_nothing, response_deadline_s=3600)
    status, headers, body = _status_body(_call(app))
    assert status == 503 and headers[b"retry-after"] == b"1"
    assert "lost before it answered" in body["error"]


def test_the_deadline_comes_from_the_nodes_environment(monkeypatch):
    monkeypatch.setenv(RESPONSE_DEADLINE_ENV, "7.5")
    (middleware,) = proxy_middlewares()
    assert middleware.kwargs["response_deadline_s"] == 7.5
    monkeypatch.delenv(RESPONSE_DEADLINE_ENV)
    (middleware,) = proxy_middlewares()
    assert middleware.kwargs["response_deadline_s"] == 120.0
