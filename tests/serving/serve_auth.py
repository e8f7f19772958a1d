"""The bearer token of the Serve apps that run with auth on (``test_auth_http.py``,
``test_fuzz_api.py``, ``test_replica_loss.py``): ``$SPLADERAY_TEST_AUTH_TOKEN``, set when this
module is imported (by ``conftest.py``, at collection), before the session's Ray cluster starts,
so the raylet and every replica read it from their environment as the docs tell operators to."""

from __future__ import annotations

import os
import secrets

TOKEN_ENV = "SPLADERAY_TEST_AUTH_TOKEN"
TOKEN = os.environ.setdefault(TOKEN_ENV, "sr-test-" + secrets.token_hex(16))
AUTH = {"authorization": f"Bearer {TOKEN}"}
