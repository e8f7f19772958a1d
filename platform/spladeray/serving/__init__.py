"""The Ray Serve application: encoder deployment, HTTP ingress, limits, metrics.

``serve/app.py`` is a thin entry over :func:`spladeray.serving.app.app_builder`. Importing this
package does not import Ray; the submodules do.
"""

from __future__ import annotations

__all__ = ["app_builder", "build_app"]


def __getattr__(name: str):
    if name in __all__:
        from spladeray.serving import app

        return getattr(app, name)
    raise AttributeError(name)
