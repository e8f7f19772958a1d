"""Where things live: the project root and the offline assets.

The library never reads the environment on import; these functions read it when called.
"""

from __future__ import annotations

import os
from pathlib import Path

ASSETS_ENV = "SPLADERAY_ASSETS"


def project_root() -> Path:
    """The checkout root: the nearest parent of this file holding ``pyproject.toml``.

    Falls back to the current directory for an installed (non-editable) package.
    """
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "platform").is_dir():
            return parent
    return Path.cwd()


def assets_root() -> Path:
    """The offline models and data: ``$SPLADERAY_ASSETS`` or ``<project root>/../shared/assets``."""
    env = os.environ.get(ASSETS_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return (project_root() / ".." / "shared" / "assets").resolve()


def asset(*parts: str) -> Path:
    """A path inside the assets root; raises a clear error when it does not exist."""
    path = assets_root().joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"asset {'/'.join(parts)!r} not found at {path}; set ${ASSETS_ENV} to the assets folder"
        )
    return path
