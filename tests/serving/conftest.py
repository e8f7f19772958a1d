"""Serve tests: the proxy middleware that answers 503 (not 500) when a replica is lost.

Ray Serve's proxy reads ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` from its environment, so it
is set when this module is imported, i.e. at collection, before the session's Ray cluster (and
with it the proxy) starts; the raylet and every worker inherit it (as docs/serve.md tells
operators to do with the environment of ``ray start``).

The bearer token of the apps that run with auth on (``test_auth_http.py``, ``test_fuzz_api.py``,
``test_replica_loss.py``) is in ``$SPLADERAY_TEST_AUTH_TOKEN`` (``serve_auth.py``), set here for the same reason: the
replicas read it from the environment Ray started with. Apps of the other tests name no such
variable (the default ``SPLADERAY_API_TOKEN`` is unset), so on the loopback bind they are open.

The proxy's response deadline (``SPLADERAY_RESPONSE_DEADLINE_S``, 120 s by default) is 60 s here:
far above the slowest answer the suite's replicas give under a CPU hog (10 s), below the 180-s
client bound of ``test_replica_loss.py``, so that a request Ray Serve's router loses while the
replica dies gets its 503 within that bound.
"""

from __future__ import annotations

import os

import serve_auth  # noqa: F401  (sets $SPLADERAY_TEST_AUTH_TOKEN before Ray starts)

from spladeray.serving.proxy import CALLBACK, RESPONSE_DEADLINE_ENV

os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", CALLBACK)
os.environ.setdefault(RESPONSE_DEADLINE_ENV, "60")
