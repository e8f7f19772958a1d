"""The Serve deployment: the FastAPI routes (``/encode``, ``/index``, ``/search``, ``/healthz``,
``/metrics``, ``/docs``) and the batched encoder in one replica.

A request makes one hop, proxy -> replica: the routes validate it and call the replica's own
:class:`~spladeray.serving.encoder.BatchedEncoder`, which packs the texts of concurrent requests
into model calls. The deployment is named ``Encoder`` and autoscales on ongoing HTTP requests.

Errors are JSON ``{"error": message, "detail": ...}`` with a 4xx status: 400 unreadable JSON,
401 missing/wrong bearer token, or a token in the URL (the routes in ``serve.protect``, all by
default, when the variable ``serve.bearer_token_env`` names is set; unset, the app serves only a
loopback bind, see :mod:`spladeray.serving.security`), 403 an index outside
``serve.allowed_indices``, 404 unknown index, 413 too many documents or
too many bytes, 422 invalid fields; 503 with ``Retry-After`` when the replicas are at capacity
(Serve's back-pressure, ``max_queued_requests``), when encoding takes longer than
``serve.request_timeout_s``, the index backend is unreachable, or the model of the live index
cannot be loaded (a generic message with an error id; the detail is logged under that id). A
replica that dies under a request is answered in the proxy (503 with
``Retry-After``, see :mod:`spladeray.serving.proxy`).

**Limits OpenSearch enforces** never reach it as errors: ``/search`` brings the query vector
within them before any backend call (:func:`spladeray.index.search.limit`: at most
``serve.max_query_terms`` terms, the heaviest; weights clipped to (0, 64]; over-long feature
names dropped) and says what it changed in ``warnings``; ``/index`` fails a document whose
stored fields exceed ``serve.max_document_bytes`` by id, with the reason.

The bearer token is compared in constant time and never logged or echoed; a token in the query
string (``?token=``, ``?access_token=``) is refused, since URLs end up in logs and histories.

**Reading through a rollout alias.** On OpenSearch, when the index name (``index.name`` or a
request's ``index``) is an alias that :func:`spladeray.index.rollout.rollout` manages (its one
target records ``_meta.spladeray.model_path``), every encoding for that index uses the model
that built the target: ``/search`` encodes the query with it and searches the concrete target,
so a query and the documents it is scored against always come from the same model, before,
during and after a switch. The model is picked by Serve model multiplexing on the encoder
(``multiplexed_model_id`` = the model path; the configured model when the alias has no
``_meta``, the name is a plain index, or the backend is the embedded one). The resolution is
the index's own ``resolve_alias`` (see :class:`spladeray.index.base.SparseIndex`), cached per
replica for ``serve.alias_cache_s`` seconds. ``/index`` writes go to the name as given
(the alias, hence the live index only), encoded with the live index's model.

No ``from __future__ import annotations`` here: Serve's ingress wraps the route methods, and
FastAPI must see real annotation objects to tell request bodies from query parameters.
"""

import asyncio
import hmac
import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from spladeray.index import open_index
from spladeray.index import search as search_path
from spladeray.index.base import Failure, Hit, IndexNotFoundError, IndexUnavailableError
from spladeray.index.documents import check_document, printable
from spladeray.serving.encoder import BatchedEncoder, ModelLoadError
from spladeray.serving.limits import (
    BodyLimitMiddleware,
    document_bytes,
    truncate_texts,
)
from spladeray.serving.metrics import CONTENT_TYPE, ReplicaMetrics
from spladeray.serving.schemas import (
    Contribution,
    EncodeRequest,
    EncodeResponse,
    ErrorResponse,
    HealthResponse,
    HealthUnavailable,
    IndexErrorResponse,
    IndexRequest,
    IndexResponse,
    MLCommonsRequest,
    MLCommonsResponse,
    SearchHit,
    SearchRequest,
    SearchResponse,
    ml_commons_shape,
)
from spladeray.serving.security import (
    IndexAllowList,
    RequestGate,
    health_view,
    incident,
    proxy_bind_host,
    resolve_access,
)

logger = logging.getLogger(__name__)

URL_TOKEN_PARAMS = ("token", "access_token")
"""Query parameters a client might put a token in; refused on protected routes."""

RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying (the condition is transient)",
        "schema": {"type": "integer"},
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "the body is not valid JSON"},
    401: {"model": ErrorResponse, "description": "missing or wrong bearer token (protected route)"},
    403: {"model": ErrorResponse, "description": "the index is not in serve.allowed_indices"},
    413: {"model": ErrorResponse, "description": "too many items, or a body over the byte limit"},
    422: {"model": ErrorResponse, "description": "invalid fields; detail lists them"},
    503: {
        "model": ErrorResponse,
        "description": "encoder at capacity or unavailable, or the index backend unreachable",
        "headers": RETRY_AFTER,
    },
}
"""The error statuses every POST route declares (the OpenAPI document at ``/openapi.json``)."""
INDEX_ERRORS = {k: {**v, "model": IndexErrorResponse} for k, v in ERRORS.items()}

api = FastAPI(
    title="spladeray",
    description="Learned sparse (SPLADE) encoding, indexing and search on Ray Serve.",
    version="0.1.0",
)
api.state.max_request_bytes = 8 * 1024 * 1024
api.add_middleware(BodyLimitMiddleware, get_limit=lambda: api.state.max_request_bytes)
api.state.gate = (None, True)  # (serve.trusted_hosts, serve.docs), set by the replica
api.add_middleware(RequestGate, get_settings=lambda: api.state.gate)


def _json(body: Any, status: int = 200) -> Response:
    """JSON bytes straight from ``json.dumps`` (what ``JSONResponse`` writes), skipping FastAPI's
    ``jsonable_encoder`` walk over every token of every vector: the hot path of ``/encode``."""
    content = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return Response(content.encode(), status_code=status, media_type="application/json")


def _retry_after(limits) -> str:
    """``Retry-After`` in whole seconds (RFC 9110 delay-seconds), rounded up."""
    return str(max(0, math.ceil(limits.retry_after_s)))


def _error(status: int, message: str, detail: Any = None, headers=None) -> JSONResponse:
    body: dict[str, Any] = {"error": printable(message)}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(status_code=status, content=body, headers=headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return _error(400, "request body is not valid JSON")
    detail = [  # field names come from the client: escaped, so that any of them can be echoed
        {
            "loc": [printable(str(p)) for p in e.get("loc", ())],
            "msg": printable(str(e.get("msg"))),
            "type": e.get("type"),
        }
        for e in errors
    ]
    summary = "; ".join(f"{'.'.join(d['loc'][1:]) or 'body'}: {d['msg']}" for d in detail[:5])
    return _error(422, f"invalid request: {summary}", detail)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s", request.url.path)
    return _error(500, f"internal error: {type(exc).__name__}")


@dataclass(frozen=True)
class IndexRoute:
    """Where a request for an index name goes: the index to query and the encoder model."""

    index: str  # the concrete index behind a rollout alias, else the name as given
    model: str = ""  # multiplexed model id (a model path); "" = the configured model
    alias: str | None = None  # the alias ``index`` was resolved through
    model_hash: str | None = None  # _meta's model_files_sha256 of ``model`` (verified on load)


class IndexRouter:
    """Resolves index names through rollout aliases, caching each answer ``ttl_s`` seconds.

    A name that is no alias over exactly one index (a plain index, an alias over several, any
    name on the embedded backend, which has no aliases) routes to itself with the configured
    model. When the backend cannot be asked, the last answer is reused (however old); without
    one, the name itself.
    """

    max_entries = 1024
    """Names cached at most (a client choosing names must not grow a replica's memory)."""

    def __init__(self, index, default_model: str, ttl_s: float, clock=time.monotonic) -> None:
        self.index = index
        self.default_model = default_model
        self.ttl_s = ttl_s
        self.clock = clock
        self._cache: dict[str, tuple[float, IndexRoute]] = {}
        self._mutex = threading.Lock()

    def cached(self, name: str) -> IndexRoute | None:
        """The route for ``name`` if a fresh answer is cached (never blocks), else None."""
        with self._mutex:
            cached = self._cache.get(name)
        if cached is not None and self.clock() < cached[0]:
            return cached[1]
        return None

    def resolve(self, name: str) -> IndexRoute:
        """Blocking (an OpenSearch round trip on a cache miss): call it from a worker thread."""
        now = self.clock()
        with self._mutex:
            cached = self._cache.get(name)
        if cached is not None and now < cached[0]:
            return cached[1]
        try:
            route = self._lookup(name)
        except Exception as exc:
            if cached is not None:
                logger.warning("cannot resolve %r (%s); reusing %s", name, exc, cached[1])
                return cached[1]
            logger.warning("cannot resolve %r (%s); using it as a plain index", name, exc)
            return IndexRoute(name)
        with self._mutex:
            if name not in self._cache and len(self._cache) >= self.max_entries:
                self._cache.pop(next(iter(self._cache)))  # bounded: the oldest name goes
            self._cache[name] = (now + self.ttl_s, route)
        if cached is not None and cached[1] != route:
            logger.info("index %r now routes to %s (was %s)", name, route, cached[1])
        return route

    def _lookup(self, name: str) -> IndexRoute:
        resolved = self.index.resolve_alias(name)
        if resolved is None:  # a plain index (or none), or an alias over several indices
            return IndexRoute(name)
        index, meta = resolved
        path = str(meta.get("model_path") or "")
        if path == self.default_model:
            return IndexRoute(index, "", name)
        return IndexRoute(index, path, name, meta.get("model_files_sha256"))


@serve.deployment(name="Encoder")
@serve.ingress(api)
class EncoderIngress:
    """One replica: validates requests, encodes in batches, reads and writes the index."""

    def __init__(self, cfg, load_gate: str | None = None) -> None:
        self.index = None  # opened last: __del__ closes it only once it exists
        self.cfg = cfg
        self.limits = cfg.serve
        api.state.max_request_bytes = cfg.serve.max_request_bytes
        api.state.gate = (cfg.serve.trusted_hosts, cfg.serve.docs)
        self.metrics = ReplicaMetrics()
        self._created: set[str] = set()
        # no token: only a loopback bind may serve (loudly); before the model loads, so a
        # refused replica fails at once
        access = resolve_access(cfg.serve, proxy_bind_host())
        self._token: bytes | None = access.token
        self._protected: frozenset[str] = access.protected
        self.allowed = IndexAllowList(cfg.index, cfg.serve.allowed_indices)
        # the model loads here, so Serve counts the replica ready only once it can encode
        self.encoder = BatchedEncoder(cfg, self.metrics, load_gate)
        self.index = open_index(cfg.index, tokenizer=cfg.model.path)
        self.default_model = str(cfg.model.path)
        self.router = IndexRouter(self.index, self.default_model, cfg.serve.alias_cache_s)

    def __del__(self) -> None:  # graceful shutdown: release the backend's connections
        if self.index is not None:
            try:
                self.index.close()
            except Exception as exc:  # the interpreter may be shutting down
                logger.debug("closing the index failed: %s", exc)

    # ------------------------------------------------------------------ Serve hooks
    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batching settings (``user_config``), applied in place without a restart."""
        self.encoder.reconfigure(user_config)

    # ------------------------------------------------------------------ helpers
    async def _route(self, name: str) -> IndexRoute:
        route = self.router.cached(name)  # the common case: no thread hop
        if route is None:
            route = await asyncio.to_thread(self.router.resolve, name)
        if route.model:  # the model is verified against this hash before it is served
            self.encoder.expect(route.model, route.model_hash)
        return route

    async def _encode(self, texts: list[str], kind: str, model: str = "") -> list[dict[str, float]]:
        timeout = self.limits.request_timeout_s
        try:
            encoded = await asyncio.wait_for(self.encoder.encode(texts, kind, model), timeout)
        except asyncio.TimeoutError:
            raise HTTPException(
                503,
                f"encoding took longer than {timeout}s (serve.request_timeout_s)",
                headers={"Retry-After": _retry_after(self.limits)},
            ) from None
        except ModelLoadError as exc:
            raise HTTPException(
                503,
                incident("the index's model cannot be served", exc),
                headers={"Retry-After": _retry_after(self.limits)},
            ) from None
        return [e.vector for e in encoded]

    def _check_count(self, n: int, what: str) -> None:
        limit = self.limits.max_documents_per_request
        if n > limit:
            raise HTTPException(
                413,
                f"{n} {what} in one request; the limit is {limit} (serve.max_documents_per_request)",
            )

    def _authorize(self, request: Request, route: str) -> None:
        """401 unless ``route`` is unprotected or the request carries the bearer token."""
        if route in self._protected:
            self._check_token(request)

    def _authenticated(self, request: Request) -> bool:
        """Whether the request may see what only an authenticated caller sees (``/healthz``'s
        model path and pid): it carries the token, or the API is open (loopback, no token)."""
        try:
            self._check_token(request)
        except HTTPException:
            return False
        return True

    def _check_index(self, name: str) -> None:
        """403 (naming ``serve.allowed_indices``) unless a request may use index ``name``."""
        refusal = self.allowed.refusal(name)
        if refusal is not None:
            raise HTTPException(403, refusal)

    def _unavailable(self, exc: Exception) -> str:
        return incident("the index backend is unavailable", exc)

    def _check_token(self, request: Request) -> None:
        """The token must come in ``Authorization: Bearer``, never in the URL; compared in
        constant time. Neither the token nor what was sent appears in the error."""
        if self._token is None:
            return
        if any(name in request.query_params for name in URL_TOKEN_PARAMS):
            raise HTTPException(
                401,
                "a token in the URL is refused (URLs are logged); send Authorization: Bearer",
                headers={"WWW-Authenticate": "Bearer"},
            )
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self._token
        ):
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    def _timed(self, route: str, started: float, status: int) -> None:
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.latency.labels(route).observe(time.perf_counter() - started)

    # ------------------------------------------------------------------ routes
    @api.get(
        "/healthz",
        response_model=None,
        responses={
            200: {"model": HealthResponse},
            503: {"model": HealthUnavailable, "description": "no encoder replica is ready"},
        },
    )
    async def healthz(self, request: Request) -> JSONResponse:
        """200 from a replica, which answers only once its model is loaded. While no replica
        can answer (starting, or replaced after a crash), the proxy answers 503
        (:mod:`spladeray.serving.proxy`). Open to all; ``serve.env_vars`` by key name only, the
        model path and the pid only with the bearer token (or on an open loopback API)."""
        index = {"backend": self.cfg.index.backend, "name": self.cfg.index.name}
        encoder = health_view(self.encoder.info(), self._authenticated(request))
        return JSONResponse({"status": "ok", "encoder": encoder, "index": index})

    @api.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics_text(self) -> Response:
        """Prometheus text of this replica (see :mod:`spladeray.serving.metrics`)."""
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    @api.post(
        "/encode",
        response_model=None,
        responses={200: {"model": EncodeResponse | MLCommonsResponse}, **ERRORS},
    )
    async def encode(self, body: EncodeRequest, request: Request) -> dict[str, Any]:
        """Sparse vectors ``{token: weight}`` for documents or queries."""
        started = time.perf_counter()
        self._authorize(request, "encode")
        self._check_count(len(body.items), "texts")
        texts, cut = truncate_texts(body.items, self.limits.max_text_chars)
        self.metrics.truncated.inc(len(cut))
        route = await self._route(self.cfg.index.name)  # vectors comparable with the live index
        vectors = await self._encode(texts, body.kind, route.model)
        self._timed("/encode", started, 200)
        if (body.format or self.limits.response_format) == "ml_commons":
            return _json(ml_commons_shape(vectors))
        return _json(
            {"vectors": vectors, "truncated": cut, "model": route.model or self.default_model}
        )

    @api.post("/_plugins/_ml/_predict/sparse_encoding", include_in_schema=False)
    @api.post(
        "/_plugins/_ml/_predict/sparse_encoding/{model_id}",
        response_model=MLCommonsResponse,
        responses=ERRORS,
    )
    async def ml_commons_encode(
        self, body: MLCommonsRequest, request: Request, model_id: str = ""
    ) -> dict:
        """OpenSearch ML Commons ``_predict/sparse_encoding``, answered in its shape."""
        self._authorize(request, "encode")
        self._check_count(len(body.text_docs), "texts")
        texts, cut = truncate_texts(body.text_docs, self.limits.max_text_chars)
        route = await self._route(self.cfg.index.name)
        return _json(ml_commons_shape(await self._encode(texts, "document", route.model)))

    @api.post(
        "/_plugins/_ml/_predict/sparse_tokenize/{model_id}",
        response_model=MLCommonsResponse,
        responses=ERRORS,
    )
    async def ml_commons_tokenize(
        self, body: MLCommonsRequest, request: Request, model_id: str = ""
    ) -> dict:
        """ML Commons ``sparse_tokenize`` (query side of inference-free models)."""
        self._authorize(request, "encode")
        self._check_count(len(body.text_docs), "texts")
        texts, _ = truncate_texts(body.text_docs, self.limits.max_text_chars)
        route = await self._route(self.cfg.index.name)
        return _json(ml_commons_shape(await self._encode(texts, "query", route.model)))

    @api.post("/index", response_model=IndexResponse, responses=INDEX_ERRORS)
    async def index_documents(self, body: IndexRequest, request: Request):
        """Encode and bulk-write documents by id; failures are listed by id with the reason."""
        started = time.perf_counter()
        self._authorize(request, "index")
        self._check_count(len(body.documents), "documents")
        name = body.index or self.cfg.index.name
        self._check_index(name)
        failed: list[Failure] = []
        ids, texts, fields = [], [], []
        for raw in body.documents:
            doc = check_document(raw.id, raw.title, raw.text, raw.model_extra)
            if isinstance(doc, Failure):
                failed.append(doc)
                continue
            size = document_bytes(doc.fields())
            if size > self.limits.max_document_bytes:
                failed.append(
                    Failure(
                        doc.id,
                        f"the document is {size} bytes of JSON; the limit is "
                        f"{self.limits.max_document_bytes} (serve.max_document_bytes)",
                    )
                )
                continue
            ids.append(doc.id)
            texts.append(doc.encode_text)
            fields.append(doc.fields())
        indexed = 0
        if ids:
            texts, cut = truncate_texts(texts, self.limits.max_text_chars)
            self.metrics.truncated.inc(len(cut))
            # written to the name as given (an alias: its live index), encoded by that index's model
            route = await self._route(name)
            vectors = await self._encode(texts, "document", route.model)
            try:
                result = await asyncio.to_thread(self._write, name, ids, vectors, fields)
            except IndexUnavailableError as exc:
                partial = exc.result
                confirmed = partial.indexed if partial is not None else 0
                lost = (
                    partial.failed
                    if partial is not None
                    else [Failure(d, "not indexed: the index backend is unavailable") for d in ids]
                )
                self.metrics.record_index(confirmed, len(failed) + len(lost))
                self._timed("/index", started, 503)
                return JSONResponse(
                    status_code=503,
                    headers={"Retry-After": "5"},
                    content={
                        "error": self._unavailable(exc),
                        "indexed": confirmed,
                        "failed": [f.__dict__ for f in failed + lost],
                        "index": name,
                    },
                )
            indexed = result.indexed
            failed.extend(result.failed)
        self.metrics.record_index(indexed, len(failed))
        self._timed("/index", started, 200)
        return {"indexed": indexed, "failed": [f.__dict__ for f in failed], "index": name}

    def _write(self, name, ids, vectors, fields):
        if name not in self._created:
            self.index.create(name)
            self._created.add(name)
        result = self.index.add(name, ids, vectors, fields)
        if self.limits.refresh_after_index and result.indexed:
            self.index.refresh(name)
        return result

    @api.post(
        "/search",
        response_model=SearchResponse,
        responses={404: {"model": ErrorResponse}, **ERRORS},
    )
    async def search(self, body: SearchRequest, request: Request):
        """Top documents for a query; ``explain`` adds each hit's matching tokens.

        The query vector is brought within OpenSearch's limits first; ``warnings`` says how.
        """
        started = time.perf_counter()
        self._authorize(request, "search")
        if body.size > self.limits.max_search_size:
            raise HTTPException(
                422, f"size {body.size} is above the limit of {self.limits.max_search_size}"
            )
        # an alias is resolved to its concrete index and the model that built it, so the query
        # and the documents always come from the same model (even while the alias moves)
        self._check_index(body.index or self.cfg.index.name)
        route = await self._route(body.index or self.cfg.index.name)
        name = route.index
        query, _ = truncate_texts([body.query], self.limits.max_text_chars)
        encoded = (await self._encode(query, "query", route.model))[0]
        hybrid = self.limits.hybrid if body.hybrid is None else body.hybrid
        limited = search_path.limit(
            encoded, query[0], max_terms=self.limits.max_query_terms, hybrid=hybrid
        )
        qvec, text, warnings = limited.vector, limited.text, limited.warnings
        try:
            hits = await asyncio.to_thread(self._search, name, qvec, text, body.size, hybrid)
            explanations = None
            if body.explain:
                explanations = await asyncio.to_thread(self._explain, name, qvec, hits)
        except IndexUnavailableError as exc:
            self._timed("/search", started, 503)
            return _error(503, self._unavailable(exc), headers={"Retry-After": "5"})
        except IndexNotFoundError:
            return _error(404, f"index {name!r} does not exist")
        out = []
        for i, (hit, sparse, lexical) in enumerate(hits):
            out.append(
                SearchHit(
                    id=hit.id,
                    score=hit.score,
                    fields=hit.fields if body.fields else None,
                    explanation=explanations[i] if explanations is not None else None,
                    sparse_score=sparse,
                    bm25_score=lexical,
                )
            )
        self._timed("/search", started, 200)
        return SearchResponse(
            hits=out,
            index=name,
            model=route.model or self.default_model,
            alias=route.alias,
            query_tokens=qvec if body.explain else None,
            warnings=warnings,
        )

    def _search(
        self, name, qvec, text, size, hybrid
    ) -> list[tuple[Hit, float | None, float | None]]:
        hits = search_path.search(
            self.index, name, qvec, size, text=text, hybrid=hybrid, rrf_k=self.limits.rrf_k
        )
        return [(h.hit, h.sparse_score, h.bm25_score) for h in hits]

    def _explain(self, name, qvec, hits) -> list[list[Contribution]]:
        """Per hit: the shared tokens and ``query_weight * doc_weight``, largest first."""
        explained = search_path.explain(self.index, name, qvec, [hit.id for hit, _, _ in hits])
        return [[Contribution(**c.__dict__) for c in row] for row in explained]
