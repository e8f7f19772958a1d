"""The Serve application: ``serve run serve/config.yaml`` (or ``serve run serve.app:app``).

Thin on purpose: the deployments live in :mod:`spladeray.serving`. ``app`` is an application
builder; its ``args`` (``config``, ``overrides``) come from serve/config.yaml.
"""

import sys
from pathlib import Path

# Run from a checkout without installing too: put platform/ on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from spladeray.serving.app import app_builder  # noqa: E402

app = app_builder
