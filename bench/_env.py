"""What every benchmark script sets before its imports: ``import _env`` (bench/ is on sys.path
when a script runs as ``python bench/X.py``; tests that load a bench module put it there).

- ``platform/`` on ``sys.path``, so the scripts run from a checkout without installing;
- offline and quiet defaults (``HF_HUB_OFFLINE``, ``TOKENIZERS_PARALLELISM``,
  ``RAY_USAGE_STATS_ENABLED``), only where the environment has not set them;
- :func:`serve_proxy_hook`: the Serve proxy middleware docs/serve.md asks operators to set (503 +
  Retry-After when a replica is lost), for the scripts that start Serve.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "platform") not in sys.path:
    sys.path.insert(0, str(ROOT / "platform"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def serve_proxy_hook() -> None:
    """Install spladeray's proxy middleware for a Serve started by this process (before
    ``serve.start``: the proxy reads the variable when it starts)."""
    os.environ.setdefault(
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "spladeray.serving.proxy:proxy_middlewares"
    )
