"""Safe defaults of the Serve app: who may call a route, which indices a request may name, what
``/healthz`` tells whom, and error bodies that carry no backend detail.

**Authentication** (:func:`resolve_access`). The bearer token is the value of the environment
variable ``serve.bearer_token_env`` names (``SPLADERAY_API_TOKEN`` in configs/serve.yaml), and the
routes in ``serve.protect`` (all of them by default: ``encode``, ``index``, ``search``) need it.
Without a token the app serves only a loopback bind (``127.0.0.1``, ``::1``, ``localhost``), and
then says once, loudly, that its API is open; on any other bind it refuses to start. The bind
address is Serve's: ``http_options.host`` in serve/config.yaml (or ``serve.start``), which the
replica asks the Serve controller for (:func:`proxy_bind_host`).

**Allowed indices** (:class:`IndexAllowList`). A request's ``index`` must be in
``serve.allowed_indices`` (fnmatch patterns); by default: ``index.name``, the rollout alias, and
its rollout versions ``<alias>-<hex>``. Anything else is a 403 naming the setting, before any
backend call.

**Error ids** (:func:`incident`). A 503 from a backend or model failure answers a generic message
and an id; the detail (hosts, ports, paths) is logged under the same id.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)

ROUTES = ("encode", "index", "search")
"""The route groups ``serve.protect`` can name (``encode`` covers the ML Commons _predict)."""


class InsecureBindError(RuntimeError):
    """The API would listen beyond loopback without a bearer token."""


def is_loopback(host: str | None) -> bool:
    """``127.0.0.0/8``, ``::1`` and ``localhost``; anything else (``0.0.0.0``, ``::``, a name, an
    unknown bind) is not."""
    if not host:
        return False
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def proxy_bind_host(timeout_s: float = 30.0) -> str | None:
    """The host Serve's HTTP proxies bind (``http_options.host``), from the Serve controller;
    None when it cannot be asked (then the bind counts as non-loopback)."""
    import ray

    if not ray.is_initialized():  # not in a replica (a unit test): never start a Ray here
        return None
    try:
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        return str(ray.get(controller.get_http_config.remote(), timeout=timeout_s).host)
    except Exception as exc:  # no controller (a unit test), or it did not answer
        logger.warning("cannot ask Serve for its bind address (%s); treating it as public", exc)
        return None


@dataclass(frozen=True)
class Access:
    """The token (None: the API is open) and the route groups that need it."""

    token: bytes | None
    protected: frozenset[str]


def resolve_access(serve_cfg, bind_host: str | None, environ: Mapping[str, str] | None = None):
    """The :class:`Access` of a replica, or :class:`InsecureBindError` for an open public bind.

    With ``serve.bearer_token_env`` set and its variable non-empty, the routes in
    ``serve.protect`` need that token. Otherwise the API is open, which is allowed on a loopback
    bind only, with one WARNING line that says so; elsewhere the app refuses to start.
    """
    environ = os.environ if environ is None else environ
    name = serve_cfg.bearer_token_env
    token = environ.get(name) if name else None
    if token:
        return Access(token.encode(), frozenset(serve_cfg.protect))
    why = f"${name} is not set" if name else "serve.bearer_token_env is not set"
    if not is_loopback(bind_host):
        raise InsecureBindError(
            f"refusing to serve an open API on {bind_host or 'an unknown bind address'} ({why}): "
            "set serve.bearer_token_env to a variable holding a token (configs/serve.yaml: "
            "SPLADERAY_API_TOKEN), or bind to 127.0.0.1 (http_options.host in serve/config.yaml)"
        )
    logger.warning(
        "API OPEN: /encode /index /search need no token (%s); acceptable only because Serve "
        "binds %s (loopback). Set a token before exposing it",
        why,
        bind_host,
    )
    return Access(None, frozenset())


# --------------------------------------------------------------------------- allowed indices
def default_allowed_indices(index_cfg) -> list[str]:
    """``index.name``, the rollout alias, and the alias's versions ``<alias>-<hex>``."""
    alias = index_cfg.rollout.alias or index_cfg.name
    return sorted({index_cfg.name, alias}) + [f"{alias}-*"]


class IndexAllowList:
    """Which index names a request may give (``serve.allowed_indices``, fnmatch patterns).

    The default's ``<alias>-*`` matches only rollout version names (``<alias>-`` + 6-64 hex).
    """

    def __init__(self, index_cfg, allowed: list[str] | None) -> None:
        self.explicit = allowed is not None
        self.patterns = list(allowed) if allowed is not None else default_allowed_indices(index_cfg)
        alias = index_cfg.rollout.alias or index_cfg.name
        self._version = re.compile(rf"^{re.escape(alias)}-[0-9a-f]{{6,64}}$")
        self._version_glob = f"{alias}-*"

    def allows(self, name: str) -> bool:
        for pattern in self.patterns:
            if not self.explicit and pattern == self._version_glob:
                if self._version.match(name):
                    return True
            elif fnmatch.fnmatchcase(name, pattern):
                return True
        return False

    def refusal(self, name: str) -> str | None:
        """None when ``name`` is allowed, else the 403 message (it names the setting)."""
        if self.allows(name):
            return None
        return (
            f"index {name!r} is not allowed: serve.allowed_indices is {self.patterns} "
            "(default: index.name, its rollout alias and versions)"
        )


# --------------------------------------------------------------------------- health and errors
def health_view(info: dict, authenticated: bool) -> dict:
    """``/healthz``'s encoder facts: ``serve.env_vars`` by key name only, always; the model path
    and the pid only for an authenticated caller (or an open loopback API)."""
    view = {k: v for k, v in info.items() if k not in ("model", "pid", "env")}
    view["env"] = sorted(info.get("env") or ())
    if authenticated:
        view["model"] = info.get("model")
        view["pid"] = info.get("pid")
    return view


def incident(message: str, exc: BaseException | str) -> str:
    """``message`` with a fresh error id; the detail is logged (WARNING) under the same id, so a
    response never carries hosts, ports or paths, and the operator can still find them."""
    error_id = uuid.uuid4().hex[:12]
    logger.warning("error %s: %s: %s", error_id, message, exc)
    return f"{message} (error id {error_id}; the detail is in the server log)"


# --------------------------------------------------------------------------- served models
def model_roots(cfg) -> list[str]:
    """``serve.model_roots``, or by default the directory (or URI prefix) holding
    ``model.path``: models saved beside the configured one."""
    if cfg.serve.model_roots is not None:
        return [str(r) for r in cfg.serve.model_roots]
    path = str(cfg.model.path).rstrip("/")
    return [path.rsplit("/", 1)[0] if "/" in path else path]


def _under(path: str, root: str) -> bool:
    if "://" not in path and "://" not in root:
        path, root = os.path.realpath(path), os.path.realpath(root)
    root = root.rstrip("/")
    return path == root or path.startswith(root + "/")


def check_model_path(path: str, roots: list[str]) -> str | None:
    """None when ``path`` (an index's ``_meta.spladeray.model_path``) is under an allowed root,
    else why it is refused. A symlink or ``..`` that leaves the root counts as outside."""
    if any(_under(path, root) for root in roots):
        return None
    return f"model path is outside serve.model_roots {roots}"


def verify_model_hash(path: str, expected: str | None) -> None:
    """Raise ValueError unless the files of the model at ``path`` (weights, configs, tokenizer,
    ``idf.json``; a URI is fetched to the local cache first) have the SHA-256 that the index's
    ``_meta.spladeray.model_files_sha256`` records (written by ``jobs/index.py --rollout``).

    Files, not the loaded weights: the serving config's ``model:`` overrides (lengths, device,
    dtype) may differ from the indexing job's without changing which model it is.
    """
    from spladeray.index.rollout import model_hash_from_dir
    from spladeray.model.loading import resolve_model_dir

    if not expected:
        raise ValueError(
            "the index records no model_files_sha256 to verify its model against (an index "
            "rolled out before spladeray recorded it: roll it out again)"
        )
    actual = model_hash_from_dir(resolve_model_dir(path))
    if actual != expected:
        raise ValueError(f"model files hash {actual[:12]} is not the index's {expected[:12]}")


# --------------------------------------------------------------------------- host and docs gate
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")


class RequestGate:
    """ASGI middleware: ``serve.trusted_hosts`` (a ``Host`` header matching none of the fnmatch
    patterns is a 400, as Starlette's ``TrustedHostMiddleware`` answers) and ``serve.docs: false``
    (``/docs`` and ``/redoc``, which load Swagger UI / ReDoc from a CDN, answer 404).

    ``get_settings()`` is read per request, because the replica sets the values after the app
    (a module global) is built."""

    def __init__(self, app, get_settings) -> None:
        self.app = app
        self.get_settings = get_settings

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hosts, docs = self.get_settings()
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if not docs and path.removeprefix(root) in DOCS_PATHS:
            await _answer(send, 404, "the API docs are off (serve.docs: false)")
            return
        if hosts is not None:
            headers = dict(scope.get("headers") or [])
            host = headers.get(b"host", b"").decode("latin-1").rsplit(":", 1)[0].strip("[]")
            if not any(fnmatch.fnmatchcase(host.lower(), p.lower()) for p in hosts):
                await _answer(send, 400, "invalid Host header (serve.trusted_hosts)")
                return
        await self.app(scope, receive, send)


async def _answer(send, status: int, message: str) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
