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

**Scaled to zero** (``serve.min_replicas: 0``) is not down: an idle app has no replica on
purpose, and the next request starts one. ``GET /healthz`` must not be that request (a load
balancer's health check would then keep the app awake for ever), so before forwarding it the
middleware asks Serve's controller (the state ``serve status`` prints, cached ``STATE_CACHE_S``)
whether the app serving the path has no replica and a target of none: then it answers 200
``{"status": "scaled_to_zero"}`` itself.

:class:`ReplicaLossMiddleware` does all of this. It is an ASGI middleware in the proxy, installed
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
STATE_CACHE_S = 1.0
"""How long the proxy reuses Serve's state when ``/healthz`` asks whether an app is scaled to
zero (one controller call per second at most, however often health checks come)."""


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
        self._controller = None  # Serve's controller actor, looked up on first use
        self._state: tuple[float, dict[str, Any]] | None = None  # (loop time, details)

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
        if healthz and await self._scaled_to_zero(path):
            body = {
                "status": "scaled_to_zero",
                "message": "no replica runs (min_replicas 0, idle); the next request to the "
                "app starts one and waits for it (a cold start)",
            }
            await self._respond(send, 200, body)
            return
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

    async def _scaled_to_zero(self, path: str) -> bool:
        """Whether the app whose route prefix serves ``path`` is scaled to zero: every
        deployment of it has no replica and a target of none. False when Serve's state cannot
        be read (then ``/healthz`` goes to a replica as before)."""
        try:
            apps = (await self._serve_state())["applications"].values()
        except Exception as exc:
            logger.warning("cannot read Serve's state (%r); /healthz goes to a replica", exc)
            return False
        owner = _route_owner(path, apps)
        if owner is None or not owner.get("deployments"):
            return False
        return all(
            d["target_num_replicas"] == 0 and not d["replicas"]
            for d in owner["deployments"].values()
        )

    async def _serve_state(self) -> dict[str, Any]:
        """The controller's ``get_serve_instance_details`` (what ``serve status`` and
        ``serve.status()`` read), at most ``STATE_CACHE_S`` old. Awaited, not ``ray.get``: the
        proxy's event loop must not block."""
        now = asyncio.get_running_loop().time()
        if self._state is not None and now - self._state[0] < STATE_CACHE_S:
            return self._state[1]
        if self._controller is None:
            import ray

            if not ray.is_initialized():  # not in a Serve proxy (a unit test): no state
                raise RuntimeError("Ray is not initialized in this process")
            from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

            self._controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        # bounded: a controller that is restarting must not hold /healthz
        call = self._controller.get_serve_instance_details.remote()
        state = await asyncio.wait_for(_awaited(call), self.healthz_timeout_s)
        self._state = (now, state)
        return state

    async def _unavailable(self, send, body: dict[str, Any]) -> None:
        await self._respond(send, 503, body, [(b"retry-after", self.retry_after)])

    @staticmethod
    async def _respond(send, status: int, body: dict[str, Any], headers=()) -> None:
        content = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(content)).encode()),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})


async def _awaited(ref):
    return await ref


def _route_owner(path: str, apps) -> dict[str, Any] | None:
    """The app whose ``route_prefix`` is the longest prefix of ``path`` (as Serve routes)."""
    best, length = None, -1
    for app in apps:
        prefix = (app.get("route_prefix") or "").rstrip("/")
        if app.get("route_prefix") is None:
            continue
        if (path == prefix or path.startswith(prefix + "/")) and len(prefix) > length:
            best, length = app, len(prefix)
    return best


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
