"""What Serve's HTTP proxy answers when no replica does: 503 with ``Retry-After``, never a 500.

With one deployment the replica that encodes is the replica that answers HTTP. When it dies
under a request (a crash, an out-of-memory kill, ``ray.kill``, a node lost), Ray Serve's proxy
gets a ``RayActorError`` and, left alone, answers ``500 Internal Server Error``. The request was
fine and a retry will succeed once Serve has replaced the replica, so the right answer is
``503 Service Unavailable`` with ``Retry-After``. Requests that arrive while no replica is
running wait in the proxy's queue (bounded by ``max_queued_requests``, then Serve's own 503)
and go to the replacement; so does ``GET /healthz``, which therefore cannot answer "not ready"
itself: here it gets a deadline and answers 503 ``unavailable`` when no replica replies in time.

Every other request gets a deadline too, a longer one (``SPLADERAY_RESPONSE_DEADLINE_S``, 120 s
by default): a request that no replica has started to answer by then gets 503 +
``Retry-After``. Ray Serve 2.60's router can lose a request: one that it sent to the replica as
the replica died, and then re-queued for the replacement, was in rare cases never routed again
(2 runs in 9 of ``tests/serving/test_replica_loss.py`` one day, 0 in 62 the next: one request
of 200 waited, with the replacement serving the others, until the client gave up; the proxy log
shows it re-queued after "will not be considered for future requests because it has died" and
nothing after). The deadline turns such a request into a 503 its client can retry, instead of a
hang.

:class:`ReplicaLossMiddleware` does all three. It is an ASGI middleware in the proxy, installed
with Ray Serve's proxy hook: the environment of the Ray nodes (where ``ray start`` runs, before the
proxy starts) sets

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=spladeray.serving.proxy:proxy_middlewares

It changes only responses that the proxy would not otherwise start: every answer that a replica
gave (2xx, 4xx, the app's own 5xx) passes through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
from typing import Any

from starlette.middleware import Middleware

logger = logging.getLogger(__name__)

CALLBACK = "spladeray.serving.proxy:proxy_middlewares"
"""The value of ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` that installs the middleware."""

HEALTHZ_TIMEOUT_ENV = "SPLADERAY_HEALTHZ_TIMEOUT_S"
RETRY_AFTER_ENV = "SPLADERAY_RETRY_AFTER_S"
RESPONSE_DEADLINE_ENV = "SPLADERAY_RESPONSE_DEADLINE_S"


class ReplicaLossMiddleware:
    """503 + ``Retry-After`` for a request no replica answered, by a deadline or by a death.

    Each request must *start* its response within a deadline: ``healthz_timeout_s`` for
    ``GET .../healthz``, ``response_deadline_s`` for every other route (None: no deadline). Past
    it the proxy's handling of the request is cancelled (Serve drops it from its queue, or
    cancels it in the replica) and the client gets 503 + ``Retry-After``. A response that has
    started is never cut: the deadline bounds the wait for an answer, not its length.

    Args:
        app: the proxy's ASGI app.
        healthz_timeout_s: how long ``GET .../healthz`` waits for a replica before 503.
        retry_after_s: the ``Retry-After`` of those 503s, in seconds.
        response_deadline_s: how long any other request waits for a replica's answer to start.
    """

    def __init__(
        self,
        app,
        healthz_timeout_s: float = 2.0,
        retry_after_s: float = 1.0,
        response_deadline_s: float | None = 120.0,
    ) -> None:
        self.app = app
        self.healthz_timeout_s = healthz_timeout_s
        self.response_deadline_s = response_deadline_s or None  # 0 means none
        self.retry_after = str(max(0, math.ceil(retry_after_s))).encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = asyncio.get_running_loop().create_future()  # done once the response starts

        async def tracking_send(message) -> None:
            if message["type"] == "http.response.start" and not started.done():
                started.set_result(None)
            await send(message)

        method, path = scope.get("method"), scope.get("path", "")
        healthz = method == "GET" and path.rstrip("/").endswith("/healthz")
        deadline = self.healthz_timeout_s if healthz else self.response_deadline_s
        try:
            answered = await self._answered_within(
                self.app(scope, receive, tracking_send), started, deadline
            )
        except Exception:
            if started.done():
                raise
            logger.exception("the proxy failed on %s %s; 503", method, path)
            answered = True  # not a deadline: the replica was lost (below)
        if started.done():
            return
        if not answered:
            logger.warning("no replica answered %s %s within %gs; 503", method, path, deadline)
            if healthz:
                body = {
                    "status": "unavailable",
                    "error": f"no replica answered within {deadline:g}s "
                    "(starting, or being replaced)",
                }
            else:
                body = {
                    "error": f"no replica answered within {deadline:g}s (the proxy's response "
                    "deadline, SPLADERAY_RESPONSE_DEADLINE_S); retry"
                }
            await self._unavailable(send, body)
            return
        # the proxy gave up on the replica (it died) and answered nothing
        logger.warning("no replica answered %s %s; 503", method, path)
        await self._unavailable(
            send,
            {
                "error": "the replica serving this request was lost before it answered; "
                "retry (Serve is replacing it)"
            },
        )

    @staticmethod
    async def _answered_within(call, started: asyncio.Future, deadline: float | None) -> bool:
        """Run ``call`` to its end unless its response has not started by ``deadline``: then
        cancel it and return False. (Not ``asyncio.wait_for``: the proxy swallows the
        cancellation and returns, which ``wait_for`` reports as done.)"""
        if deadline is None:
            await call
            return True
        task = asyncio.ensure_future(call)
        try:
            await asyncio.wait(
                {task, started}, timeout=deadline, return_when=asyncio.FIRST_COMPLETED
            )
            if task.done() or started.done():
                await task  # started in time: no deadline on the rest; exceptions propagate
                return True
        except asyncio.CancelledError:
            task.cancel()
            raise
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False

    async def _unavailable(self, send, body: dict[str, Any]) -> None:
        content = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(content)).encode()),
                    (b"retry-after", self.retry_after),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})


def proxy_middlewares() -> list[Middleware]:
    """Ray Serve's proxy hook (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``): the middlewares
    the proxy wraps its ASGI app in. Settings come from the environment of the Ray nodes:
    ``SPLADERAY_HEALTHZ_TIMEOUT_S`` (default 2), ``SPLADERAY_RETRY_AFTER_S`` (default 1) and
    ``SPLADERAY_RESPONSE_DEADLINE_S`` (default 120; 0: none). Keep the response deadline above
    the slowest answer a replica gives: ``serve.request_timeout_s`` (60 s by default) bounds
    encoding, and ``/index`` adds the backend's time."""
    return [
        Middleware(
            ReplicaLossMiddleware,
            healthz_timeout_s=float(os.environ.get(HEALTHZ_TIMEOUT_ENV, "2")),
            retry_after_s=float(os.environ.get(RETRY_AFTER_ENV, "1")),
            response_deadline_s=float(os.environ.get(RESPONSE_DEADLINE_ENV, "120")),
        )
    ]
