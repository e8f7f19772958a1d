"""Serve tests: the proxy middleware that answers 503 (not 500) when a replica is lost.

Ray Serve's proxy reads ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` from its environment, so it
is set when this module is imported, i.e. at collection, before the session's Ray cluster (and
with it the proxy) starts; the raylet and every worker inherit it (as docs/serve.md tells
operators to do with the environment of ``ray start``).
"""

from __future__ import annotations

import os

from spladeray.serving.proxy import CALLBACK

os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", CALLBACK)
