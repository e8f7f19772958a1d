"""What Serve's HTTP proxy answers when no replica does: 503 with ``Retry-After``, never a 500.

With one deployment the replica that encodes is the replica that answers HTTP. When it dies
under a request (a crash, an out-of-memory kill, ``ray.kill``, a node lost), Ray Serve's proxy
gets a ``RayActorError`` and, left alone, answers ``500 Internal Server Error``. The request was
fine and a retry will succeed once Serve has replaced the replica, so the right answer is
``503 Service Unavailable`` with ``Retry-After``. Requests that arrive while no replica is
running wait in the proxy's queue (bounded by ``max_queued_requests``, then Serve's own 503)
and go to the replacement; so does ``GET /healthz``, which therefore cannot answer "not ready"
itself: here it gets a deadline and answers 503 ``unavailable`` when no replica replies in time.

:class:`ReplicaLossMiddleware` does both. It is an ASGI middleware in the proxy, installed with
Ray Serve's proxy hook: the environment of the Ray nodes (where ``ray start`` runs, before the
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


class ReplicaLossMiddleware:
    """503 + ``Retry-After`` for a request no replica answered; a deadline on ``/healthz``.

    Args:
        app: the proxy's ASGI app.
        healthz_timeout_s: how long ``GET .../healthz`` waits for a replica before 503.
        retry_after_s: the ``Retry-After`` of those 503s, in seconds.
    """

    def __init__(self, app, healthz_timeout_s: float = 2.0, retry_after_s: float = 1.0) -> None:
        self.app = app
        self.healthz_timeout_s = healthz_timeout_s
        self.retry_after = str(max(0, math.ceil(retry_after_s))).encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        path = scope.get("path", "")
        if scope.get("method") == "GET" and path.rstrip("/").endswith("/healthz"):
            if not await self._within_deadline(self.app(scope, receive, tracking_send)):
                if not started:
                    await self._unavailable(
                        send,
                        {
                            "status": "unavailable",
                            "error": f"no replica answered within {self.healthz_timeout_s:g}s "
                            "(starting, or being replaced)",
                        },
                    )
                return
        else:
            try:
                await self.app(scope, receive, tracking_send)
            except Exception:
                if started:
                    raise
                logger.exception("the proxy failed on %s %s; 503", scope.get("method"), path)
        if not started:  # the proxy gave up on the replica (it died) and answered nothing
            logger.warning("no replica answered %s %s; 503", scope.get("method"), path)
            await self._unavailable(
                send,
                {
                    "error": "the replica serving this request was lost before it answered; "
                    "retry (Serve is replacing it)"
                },
            )

    async def _within_deadline(self, call) -> bool:
        """Run ``call``; False if it was cancelled at the deadline. (Not ``asyncio.wait_for``:
        the proxy swallows the cancellation and returns, which ``wait_for`` reports as done.)"""
        task = asyncio.ensure_future(call)
        try:
            done, _ = await asyncio.wait({task}, timeout=self.healthz_timeout_s)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task in done:
            task.result()  # the proxy's own exceptions propagate
            return True
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
    ``SPLADERAY_HEALTHZ_TIMEOUT_S`` (default 2) and ``SPLADERAY_RETRY_AFTER_S`` (default 1)."""
    return [
        Middleware(
            ReplicaLossMiddleware,
            healthz_timeout_s=float(os.environ.get(HEALTHZ_TIMEOUT_ENV, "2")),
            retry_after_s=float(os.environ.get(RETRY_AFTER_ENV, "1")),
        )
    ]
