"""The Serve application from a checkout that is not installed: ``serve run serve.app:app``.

serve/config.yaml imports the installed library's builder instead
(``spladeray.serving.app:app_builder``, what ``pip install -e .`` provides on every node), so it
works for ``serve deploy`` on a cluster as well. Both take the same ``args`` (``config``,
``overrides``); the deployments live in :mod:`spladeray.serving`.
"""

import sys
from pathlib import Path

# Run from a checkout without installing too: put platform/ on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from spladeray.serving.app import app_builder  # noqa: E402

app = app_builder
