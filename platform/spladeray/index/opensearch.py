"""The OpenSearch backend of :class:`~spladeray.index.base.SparseIndex` (``opensearch-py``).

Mapping (``field_type``):

- ``rank_features`` (default, every OpenSearch): ``{vector_field: rank_features, title: text,
  text: text}``. Search is a ``bool`` of ``rank_feature`` ``linear`` clauses, one per query token,
  each boosted by the query weight, so ``score = sum_t q_t * d_t`` -- exactly what the
  neural-search plugin's ``neural_sparse`` query builds. ``query_type: neural_sparse`` sends that
  query instead (needs the neural-search plugin).
- ``sparse_vector`` (OpenSearch 3.3+, SEISMIC approximate search): keys are token *ids*, so the
  index needs the tokenizer vocabulary (``token_ids``); queries go through ``neural_sparse``.

Lucene's FeatureField keeps 9 significant bits of a weight (relative error <= 2^-8) and needs
finite, positive normal floats; a query weight must be in (0, 64]. So document weights of 0 (or
below the smallest normal float) are dropped, negative / NaN / infinite ones fail that document
(by id, with the reason), and query weights are clamped to (0, 64].

**Query limits** (:func:`limit_query`, applied by :meth:`OpenSearchIndex.query_body` and, with
warnings for the client, by the Serve ``/search`` route before any backend call): one query
clause per token, and OpenSearch refuses a query with more clauses than
``indices.query.bool.max_clause_count`` (1,024 by default), so only the heaviest
``max_clause_count`` tokens are kept; weights above 64 are clipped to 64, weights that are not
finite and positive are dropped, and so are feature names longer than Lucene's term limit
(:data:`MAX_FEATURE_NAME_BYTES` of UTF-8, escaped). Such a query is answered, never refused.

Feature names become Lucene field names ``<vector_field>.<token>``: a ``.`` inside a token
("." and "..." are BERT tokens) would be read as an object path, so ``%`` and ``.`` are
percent-escaped (``%25``, ``%2E``) on the way in and unescaped on the way out. The mapping is
injective, so distinct tokens never collide.

Writes use ``helpers.streaming_bulk`` (chunk size / bytes from config, 429-rejected items
retried with exponential backoff); every document ends up either counted as indexed or listed
in ``failed`` with OpenSearch's reason. Connection failures raise
:class:`~spladeray.index.base.IndexUnavailableError` carrying the partial :class:`BulkResult`
(what OpenSearch confirmed before the failure), so callers answer 503 and never over-report.

Rollout aliases (:mod:`spladeray.index.rollout`): an alias moves in one ``POST _aliases`` request
(:func:`alias_actions`), and each versioned index records its model under ``_meta.spladeray``
of its mapping (:data:`META_KEY`).

Connection (``from_config``): TLS verification is on by default (turning it off logs a warning),
optional CA bundle, basic auth or AWS SigV4 (botocore's credential chain, refreshable, signed by
opensearch-py's ``RequestsAWSV4SignerAuth``), with every secret read from
the environment variables the config names -- never from the config itself, never logged.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from spladeray.index.base import (
    BulkResult,
    Failure,
    Hit,
    IndexInfo,
    IndexNotFoundError,
    IndexUnavailableError,
    id_problem,
    vector_problem,
)

logger = logging.getLogger(__name__)

MAX_QUERY_WEIGHT = 64.0
"""Lucene ``FeatureField.newLinearQuery`` accepts weights in (0, 64]."""
MAX_CLAUSE_COUNT = 1024
"""OpenSearch's default ``indices.query.bool.max_clause_count``: clauses (tokens) per query."""
MAX_FEATURE_NAME_BYTES = 32766
"""Lucene's ``IndexWriter.MAX_TERM_LENGTH``: a feature name is a term of at most this many bytes."""
MIN_NORMAL_FLOAT = 1.1754944e-38
"""FeatureField rejects values below the smallest positive normal float32."""
MAX_FLOAT32 = 3.4028235e38
TEXT_FIELDS = ("title", "text")
MGET_IDS = 1000
"""Ids per ``_mget`` when a resumed bulk run asks which of a batch's ids are indexed."""
META_KEY = "spladeray"
"""Key of our record in an index mapping's ``_meta`` (model hash, model path, ...)."""

T = TypeVar("T")


# --------------------------------------------------------------------------- token names
def escape_token(token: str) -> str:
    """A token as a feature name OpenSearch accepts: ``%`` -> ``%25``, ``.`` -> ``%2E``."""
    if "%" in token:
        token = token.replace("%", "%25")
    if "." in token:
        token = token.replace(".", "%2E")
    return token


def unescape_token(name: str) -> str:
    """Inverse of :func:`escape_token`."""
    if "%" not in name:
        return name
    return name.replace("%2E", ".").replace("%25", "%")


def safe_document_vector(vector: Any) -> tuple[dict[str, float] | None, str | None]:
    """``(feature -> weight, None)`` ready for FeatureField, or ``(None, reason)``.

    Zeros and subnormal weights are dropped (FeatureField cannot store them and they add
    nothing to a dot product); negative, NaN, infinite or float32-overflowing weights and
    tokens that are not non-empty strings make the document fail.
    """
    problem = vector_problem(vector)
    if problem is not None:
        return None, problem
    out: dict[str, float] = {}
    for token, weight in vector.items():
        w = float(weight)
        if w < MIN_NORMAL_FLOAT:
            continue
        if w > MAX_FLOAT32:
            return None, f"weight of token {token!r} is {w!r}; it does not fit a float32"
        out[escape_token(token)] = w
    return out, None


@dataclass
class QueryLimitReport:
    """What :func:`limit_query` changed in a query vector (all zero: nothing)."""

    terms: int = 0  # terms in the query as given
    pruned: int = 0  # the lightest terms dropped beyond ``max_terms``
    clipped: int = 0  # weights above MAX_QUERY_WEIGHT set to it
    bad_weights: int = 0  # weights that are not finite positive numbers, dropped
    long_names: int = 0  # feature names over MAX_FEATURE_NAME_BYTES (escaped, UTF-8), dropped
    bad_names: int = 0  # feature names that are not non-empty strings, dropped

    @property
    def changed(self) -> bool:
        return any((self.pruned, self.clipped, self.bad_weights, self.long_names, self.bad_names))


def limit_query(
    query: Mapping[str, float], max_terms: int = MAX_CLAUSE_COUNT
) -> tuple[dict[str, float], QueryLimitReport]:
    """``(query within OpenSearch's limits, what changed)``; tokens stay unescaped.

    In order: names that are not non-empty strings or are longer than
    :data:`MAX_FEATURE_NAME_BYTES` once escaped are dropped; weights that are not finite and
    positive are dropped; weights above :data:`MAX_QUERY_WEIGHT` are clipped to it; then the
    ``max_terms`` heaviest terms (by the weight as given; ties by token) are kept.
    """
    if max_terms < 1:
        raise ValueError("max_terms must be positive")
    report = QueryLimitReport(terms=len(query))
    weights: dict[str, float] = {}
    for token, weight in query.items():
        if not isinstance(token, str) or not token:
            report.bad_names += 1
            continue
        if len(escape_token(token).encode("utf-8")) > MAX_FEATURE_NAME_BYTES:
            report.long_names += 1
            continue
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            report.bad_weights += 1
            continue
        w = float(weight)
        if not math.isfinite(w) or w <= 0:
            report.bad_weights += 1
            continue
        weights[token] = w
    if len(weights) > max_terms:
        heaviest = sorted(weights.items(), key=lambda tw: (-tw[1], tw[0]))[:max_terms]
        report.pruned = len(weights) - max_terms
        weights = dict(heaviest)
    out: dict[str, float] = {}
    for token, w in weights.items():
        if w > MAX_QUERY_WEIGHT:
            report.clipped += 1
            w = MAX_QUERY_WEIGHT
        out[token] = w
    return out, report


def safe_query_vector(
    query: Mapping[str, float], max_terms: int = MAX_CLAUSE_COUNT
) -> dict[str, float]:
    """Query weights FeatureField accepts, tokens escaped: :func:`limit_query`, then escaped."""
    limited, _ = limit_query(query, max_terms)
    return {escape_token(token): w for token, w in limited.items()}


# --------------------------------------------------------------------------- connection
def build_client(cfg, environ: Mapping[str, str] | None = None):
    """An ``opensearchpy.OpenSearch`` client for an :class:`~spladeray.config.OpenSearchConfig`.

    Secrets come from the environment variables the config names; they are never logged.
    """
    from opensearchpy import OpenSearch, RequestsHttpConnection

    env = os.environ if environ is None else environ
    for host in cfg.hosts:
        parts = urlsplit(host if "://" in host else f"http://{host}")
        if parts.username or parts.password:
            raise ValueError(
                "credentials inside opensearch.hosts are not allowed; put them in the "
                "environment variables named by username_env / password_env"
            )
    kwargs: dict[str, Any] = {
        "hosts": list(cfg.hosts),
        "timeout": cfg.timeout_s,
        "verify_certs": cfg.verify_certs,
        "ssl_show_warn": cfg.verify_certs,
    }
    if cfg.ca_certs is not None:
        kwargs["ca_certs"] = str(cfg.ca_certs)
    if not cfg.verify_certs and any(h.startswith("https") for h in cfg.hosts):
        logger.warning(
            "OpenSearch TLS certificate verification is OFF (opensearch.verify_certs: false); "
            "anyone on the network path can impersonate the cluster. Use ca_certs instead."
        )
    if cfg.aws_sigv4:
        from opensearchpy import RequestsAWSV4SignerAuth

        if not cfg.aws_region:
            raise ValueError("opensearch.aws_sigv4 needs opensearch.aws_region")
        # opensearch-py's signer asks the credentials for a frozen copy on every request, so a
        # refreshable set (role, IRSA, SSO) is renewed inside a long-running replica
        credentials = aws_credentials(cfg, None if environ is None else env)
        kwargs["http_auth"] = RequestsAWSV4SignerAuth(credentials, cfg.aws_region, cfg.aws_service)
        kwargs["connection_class"] = RequestsHttpConnection
    else:
        user = env.get(cfg.username_env) if cfg.username_env else None
        password = env.get(cfg.password_env) if cfg.password_env else None
        if user and password:
            kwargs["http_auth"] = (user, password)
            plain = [h for h in cfg.hosts if h.lower().startswith("http://")]
            if plain:
                logger.warning(
                    "basic auth to %s over plain http://: the password crosses the network "
                    "unencrypted; use https:// hosts",
                    ", ".join(plain),
                )
        elif user or password:
            raise ValueError(
                f"basic auth needs both ${cfg.username_env} and ${cfg.password_env} set"
            )
    return OpenSearch(**kwargs)


def aws_credentials(cfg, environ: Mapping[str, str] | None = None):
    """botocore credentials for SigV4: the variables ``aws_*_env`` name (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN`` by default), else botocore's whole chain
    (shared files and profiles, SSO, web identity / IRSA, container and instance roles), whose
    role-based credentials refresh themselves before they expire.

    ``environ`` (tests): only those variables are read, and the rest of the chain is not asked.
    """
    from botocore.credentials import EnvProvider

    env = os.environ if environ is None else environ
    mapping = {
        "access_key": cfg.aws_access_key_env,
        "secret_key": cfg.aws_secret_key_env,
        "token": cfg.aws_session_token_env or "AWS_SESSION_TOKEN",
        "expiry_time": "AWS_CREDENTIAL_EXPIRATION",
    }
    credentials = EnvProvider(environ=dict(env), mapping=mapping).load()
    if credentials is None and environ is None:
        import botocore.session

        credentials = botocore.session.Session().get_credentials()
    if credentials is None:
        raise ValueError(
            f"opensearch.aws_sigv4 found no AWS credentials: set ${cfg.aws_access_key_env} and "
            f"${cfg.aws_secret_key_env}, or give the node a profile, web identity (IRSA) or "
            "instance role that botocore's credential chain resolves"
        )
    return credentials


def _unavailable(exc: Exception) -> bool:
    """Whether an exception means "the backend cannot be reached / is not serving"."""
    from opensearchpy.exceptions import ConnectionError as OSConnectionError
    from opensearchpy.exceptions import TransportError

    if isinstance(exc, OSConnectionError):  # includes timeouts and TLS errors
        return True
    if isinstance(exc, TransportError):
        status = exc.status_code
        return not isinstance(status, int) or status >= 500 or status == 429
    return False


def alias_actions(alias: str, add: str, remove: Sequence[str]) -> list[dict[str, Any]]:
    """The ``POST _aliases`` actions moving ``alias`` from ``remove`` to ``add``."""
    actions: list[dict[str, Any]] = [
        {"remove": {"index": old, "alias": alias}} for old in remove if old != add
    ]
    actions.append({"add": {"index": add, "alias": alias}})
    return actions


def _reason(info: Mapping[str, Any]) -> str:
    """A one-line reason from a bulk item's ``error``."""
    error = info.get("error")
    if isinstance(error, Mapping):
        text = f"{error.get('type', 'error')}: {error.get('reason', '')}"
        cause = error.get("caused_by")
        if isinstance(cause, Mapping) and cause.get("reason"):
            text += f" ({cause.get('type', '')}: {cause['reason']})"
        return text
    return str(error or f"status {info.get('status')}")


# --------------------------------------------------------------------------- the index
class OpenSearchIndex:
    """:class:`~spladeray.index.base.SparseIndex` on an OpenSearch cluster."""

    def __init__(
        self,
        client,
        *,
        vector_field: str = "sparse",
        field_type: str = "rank_features",
        query_type: str = "rank_feature",
        index_settings: Mapping[str, Any] | None = None,
        chunk_size: int = 500,
        max_chunk_bytes: int = 10 * 1024 * 1024,
        max_retries: int = 5,
        initial_backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        token_ids: Mapping[str, int] | None = None,
        sparse_vector_method: Mapping[str, Any] | None = None,
        neural_sparse_method_parameters: Mapping[str, Any] | None = None,
        max_clause_count: int = MAX_CLAUSE_COUNT,
    ) -> None:
        if field_type not in ("rank_features", "sparse_vector"):
            raise ValueError(f"unknown field_type {field_type!r}")
        if query_type not in ("rank_feature", "neural_sparse"):
            raise ValueError(f"unknown query_type {query_type!r}")
        self.client = client
        self.vector_field = vector_field
        self.field_type = field_type
        self.query_type = "neural_sparse" if field_type == "sparse_vector" else query_type
        self.index_settings = dict(index_settings or {})
        self.chunk_size = chunk_size
        self.max_chunk_bytes = max_chunk_bytes
        self.max_retries = max_retries
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.sparse_vector_method = dict(
            sparse_vector_method or {"name": "seismic", "parameters": {}}
        )
        self.neural_sparse_method_parameters = dict(neural_sparse_method_parameters or {})
        self.token_ids = dict(token_ids) if token_ids is not None else None
        if max_clause_count < 1:
            raise ValueError("max_clause_count must be positive")
        self.max_clause_count = max_clause_count
        self._id_tokens: dict[str, str] | None = None
        self._known: set[str] = set()  # indexes created (or seen) by this instance
        if field_type == "sparse_vector" and self.token_ids is None:
            raise ValueError(
                "field_type sparse_vector keys features by token id: pass token_ids "
                "(the tokenizer vocabulary, e.g. tokenizer.get_vocab())"
            )

    @classmethod
    def from_config(cls, cfg, *, token_ids: Mapping[str, int] | None = None) -> OpenSearchIndex:
        """From an :class:`~spladeray.config.OpenSearchConfig` (secrets from the environment)."""
        return cls(
            build_client(cfg),
            vector_field=cfg.vector_field,
            field_type=cfg.field_type,
            query_type=cfg.query_type,
            index_settings=cfg.index_settings,
            chunk_size=cfg.chunk_size,
            max_chunk_bytes=cfg.max_chunk_bytes,
            max_retries=cfg.max_retries,
            initial_backoff_s=cfg.initial_backoff_s,
            max_backoff_s=cfg.max_backoff_s,
            token_ids=token_ids,
            sparse_vector_method=cfg.sparse_vector_method,
            neural_sparse_method_parameters=cfg.neural_sparse_method_parameters,
        )

    def __repr__(self) -> str:  # never the client's auth
        return f"OpenSearchIndex(field={self.vector_field!r}, type={self.field_type})"

    # ------------------------------------------------------------------ plumbing
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one request; unreachable -> :class:`IndexUnavailableError`, a missing index ->
        :class:`IndexNotFoundError`."""
        from opensearchpy.exceptions import NotFoundError

        try:
            return fn()
        except NotFoundError as exc:
            raise IndexNotFoundError(f"{what}: the index does not exist ({exc.error})") from exc
        except Exception as exc:
            if _unavailable(exc):
                raise IndexUnavailableError(
                    f"OpenSearch is unavailable ({what}): {type(exc).__name__}: {exc}"
                ) from exc
            raise

    def _feature_key(self, escaped: str) -> str | None:
        """The stored key of an (escaped) token: itself, or its token id for sparse_vector."""
        if self.field_type != "sparse_vector":
            return escaped
        tid = self.token_ids.get(unescape_token(escaped))  # type: ignore[union-attr]
        return None if tid is None else str(tid)

    def _token_of(self, key: str) -> str:
        if self.field_type != "sparse_vector":
            return unescape_token(key)
        if self._id_tokens is None:
            self._id_tokens = {str(v): k for k, v in self.token_ids.items()}  # type: ignore[union-attr]
        return self._id_tokens.get(key, key)

    # ------------------------------------------------------------------ bodies (tested as is)
    def mapping_body(self) -> dict[str, Any]:
        """The ``indices.create`` body: vector field, text fields, settings from config."""
        if self.field_type == "sparse_vector":
            vector = {"type": "sparse_vector", "method": dict(self.sparse_vector_method)}
            settings: dict[str, Any] = {"index": {"sparse": True}}
        else:
            vector = {"type": "rank_features"}
            settings = {}
        _merge(settings, self.index_settings)
        properties = {self.vector_field: vector}
        properties.update({f: {"type": "text"} for f in TEXT_FIELDS})
        # dynamic: false: a document's extra fields (any name a client of /index sends) stay in
        # _source but never become mapped fields, so they cannot push the index past
        # index.mapping.total_fields.limit; the declared fields above are the searchable ones
        mappings = {"dynamic": False, "properties": properties}
        return {"settings": settings, "mappings": mappings}

    def query_body(self, query: Mapping[str, float], size: int) -> dict[str, Any]:
        """The ``_search`` body of a sparse query (weights made safe, tokens escaped).

        The query is first brought within OpenSearch's limits by :func:`limit_query` (at most
        ``max_clause_count`` terms, the heaviest), so it never fails with ``too_many_clauses``.
        """
        limited, report = limit_query(query, self.max_clause_count)
        if report.changed:  # the Serve /search route reports this to the client as warnings
            logger.debug("query brought within OpenSearch's limits: %s", report)
        weights: dict[str, float] = {}
        for token, w in limited.items():
            escaped = escape_token(token)
            key = self._feature_key(escaped)
            if key is not None:
                weights[key] = w
        source = {"excludes": [self.vector_field]}
        if not weights:
            return {"size": size, "query": {"match_none": {}}, "_source": source}
        if self.query_type == "neural_sparse":
            clause: dict[str, Any] = {"query_tokens": weights}
            if self.field_type == "sparse_vector":
                params = {"k": size, **self.neural_sparse_method_parameters}
                clause["method_parameters"] = params
            body_query: dict[str, Any] = {"neural_sparse": {self.vector_field: clause}}
        else:
            body_query = {
                "bool": {
                    "should": [
                        {
                            "rank_feature": {
                                "field": f"{self.vector_field}.{key}",
                                "linear": {},
                                "boost": w,
                            }
                        }
                        for key, w in weights.items()
                    ]
                }
            }
        return {"size": size, "query": body_query, "_source": source}

    # ------------------------------------------------------------------ protocol
    def create(self, name: str) -> None:
        def run() -> None:
            if self.client.indices.exists(index=name):
                return
            try:
                self.client.indices.create(index=name, body=self.mapping_body())
            except Exception as exc:  # created concurrently by another replica / actor
                if "resource_already_exists" not in str(exc):
                    raise

        self._call(f"create {name}", run)
        self._known.add(name)

    def exists(self, name: str) -> bool:
        return bool(self._call(f"exists {name}", lambda: self.client.indices.exists(index=name)))

    def _prepare(
        self,
        name: str,
        ids: Sequence[str],
        vectors: Sequence[Mapping[str, float]],
        fields: Sequence[Mapping[str, Any]] | None,
    ) -> tuple[list[dict[str, Any]], list[Failure]]:
        failed: list[Failure] = []
        actions: dict[str, dict[str, Any]] = {}  # by id: the last copy of an id wins
        for i, doc_id in enumerate(ids):
            problem = id_problem(doc_id)
            vector = None
            if problem is None:
                vector, problem = safe_document_vector(vectors[i])
            if problem is None and self.field_type == "sparse_vector":
                keyed: dict[str, float] = {}
                for escaped, w in vector.items():  # type: ignore[union-attr]
                    key = self._feature_key(escaped)
                    if key is None:
                        problem = f"token {unescape_token(escaped)!r} is not in the vocabulary"
                        break
                    keyed[key] = w
                vector = keyed
            source: dict[str, Any] = {}
            if problem is None and fields is not None:
                source = {k: v for k, v in dict(fields[i]).items() if k != self.vector_field}
                try:
                    json.dumps(source)
                except (TypeError, ValueError) as exc:
                    problem = f"fields are not JSON-serialisable: {exc}"
            if problem is not None:
                failed.append(Failure(str(doc_id), problem))
                continue
            source[self.vector_field] = vector
            actions.pop(doc_id, None)
            actions[doc_id] = {
                "_op_type": "index",
                "_index": name,
                "_id": doc_id,
                "_source": source,
            }
        return list(actions.values()), failed

    def add(
        self,
        name: str,
        ids: Sequence[str],
        vectors: Sequence[Mapping[str, float]],
        fields: Sequence[Mapping[str, Any]] | None = None,
    ) -> BulkResult:
        """Bulk-write documents by id (overwrite, never duplicate); failures listed by id.

        Raises :class:`IndexUnavailableError` (with ``.result``: what was confirmed, and every
        unconfirmed document listed as failed) when OpenSearch cannot be reached.
        """
        from opensearchpy import helpers

        if len(ids) != len(vectors) or (fields is not None and len(fields) != len(ids)):
            raise ValueError("ids, vectors and fields must have the same length")
        actions, failed = self._prepare(name, ids, vectors, fields)
        result = BulkResult(0, failed)
        if not actions:
            return result
        if name not in self._known:  # never let dynamic mapping type the vector as float
            try:
                self.create(name)
            except IndexUnavailableError as exc:
                exc.result = BulkResult(
                    0,
                    failed
                    + [
                        Failure(a["_id"], "not indexed: OpenSearch is unavailable") for a in actions
                    ],
                )
                raise
        confirmed: set[str] = set()
        try:
            for ok, item in helpers.streaming_bulk(
                self.client,
                actions,
                chunk_size=self.chunk_size,
                max_chunk_bytes=self.max_chunk_bytes,
                raise_on_error=False,
                raise_on_exception=True,
                max_retries=self.max_retries,
                initial_backoff=self.initial_backoff_s,
                max_backoff=self.max_backoff_s,
            ):
                info = next(iter(item.values()))
                doc_id = str(info.get("_id"))
                confirmed.add(doc_id)
                if ok:
                    result.indexed += 1
                else:
                    result.failed.append(Failure(doc_id, _reason(info)))
        except Exception as exc:
            if not _unavailable(exc):
                raise
            lost = [a["_id"] for a in actions if a["_id"] not in confirmed]
            result.failed.extend(
                Failure(d, "not confirmed: OpenSearch became unavailable") for d in lost
            )
            raise IndexUnavailableError(
                f"OpenSearch is unavailable (bulk into {name}): {type(exc).__name__}: {exc}; "
                f"{result.indexed} documents were confirmed before the failure",
                result,
            ) from exc
        return result

    def search(self, name: str, query: Mapping[str, float], size: int = 10) -> list[Hit]:
        if size <= 0:
            raise ValueError("size must be positive")
        body = self.query_body(query, size)
        response = self._call(f"search {name}", lambda: self.client.search(index=name, body=body))
        return [_hit(h) for h in response["hits"]["hits"]]

    def search_many(
        self, name: str, queries: Sequence[Mapping[str, float]], size: int = 10
    ) -> list[list[Hit]]:
        """One :meth:`search` per query, in order."""
        return [self.search(name, query, size) for query in queries]

    def text_search(self, name: str, text: str, size: int = 10) -> list[Hit]:
        """BM25 over the text fields (the lexical leg of hybrid search)."""
        body = {
            "size": size,
            "query": {"multi_match": {"query": text, "fields": list(TEXT_FIELDS)}},
            "_source": {"excludes": [self.vector_field]},
        }
        response = self._call(f"search {name}", lambda: self.client.search(index=name, body=body))
        return [_hit(h) for h in response["hits"]["hits"]]

    def count(self, name: str) -> int:
        return int(self._call(f"count {name}", lambda: self.client.count(index=name))["count"])

    def refresh(self, name: str) -> None:
        """Make everything written so far searchable."""
        self._call(f"refresh {name}", lambda: self.client.indices.refresh(index=name))

    def delete(self, name: str) -> None:
        self._call(
            f"delete {name}",
            lambda: self.client.indices.delete(index=name, ignore_unavailable=True),
        )
        self._known.discard(name)

    def get(self, name: str, doc_id: str) -> dict[str, float] | None:
        """The stored vector of one document (token -> weight, as sent), or None."""

        def run():
            from opensearchpy.exceptions import NotFoundError

            try:
                return self.client.get(index=name, id=doc_id, _source_includes=self.vector_field)
            except NotFoundError:
                return None

        doc = self._call(f"get {name}/{doc_id}", run)
        if not doc or not doc.get("found"):
            return None
        stored = doc.get("_source", {}).get(self.vector_field) or {}
        return {self._token_of(k): float(v) for k, v in stored.items()}

    def ids(self, name: str) -> set[str]:
        """All document ids (for resuming an indexing run)."""
        from opensearchpy import helpers

        def run() -> set[str]:
            if not self.client.indices.exists(index=name):
                return set()
            hits: Iterator[dict] = helpers.scan(
                self.client, index=name, query={"query": {"match_all": {}}}, _source=False
            )
            return {h["_id"] for h in hits}

        return self._call(f"scan {name}", run)

    def existing(self, name: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the index holds: ``_mget`` without sources, ``MGET_IDS`` at a time."""
        from opensearchpy.exceptions import NotFoundError

        def run() -> set[str]:
            found: set[str] = set()
            for lo in range(0, len(ids), MGET_IDS):
                try:
                    reply = self.client.mget(
                        index=name, body={"ids": list(ids[lo : lo + MGET_IDS])}, _source=False
                    )
                except NotFoundError:  # no index yet: nothing is held
                    return set()
                found.update(d["_id"] for d in reply.get("docs", []) if d.get("found"))
            return found

        return self._call(f"mget {name}", run) if ids else set()

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------ rollout aliases
    def alias_targets(self, alias: str) -> list[str]:
        from opensearchpy.exceptions import NotFoundError

        def run() -> list[str]:
            try:
                return sorted(self.client.indices.get_alias(name=alias))
            except NotFoundError:
                return []

        return self._call(f"get alias {alias}", run)

    def resolve_alias(self, name: str) -> tuple[str, dict[str, Any]] | None:
        targets = self.alias_targets(name)
        if len(targets) != 1:
            return None
        return targets[0], self.index_meta(targets[0])

    def update_alias(self, alias: str, add: str, remove: Sequence[str] = ()) -> None:
        body = {"actions": alias_actions(alias, add, remove)}
        self._call(f"move alias {alias}", lambda: self.client.indices.update_aliases(body=body))

    def index_meta(self, name: str) -> dict[str, Any]:
        response = self._call(
            f"get mapping {name}", lambda: self.client.indices.get_mapping(index=name)
        )
        mappings = next(iter(response.values()), {}).get("mappings", {})
        return dict((mappings.get("_meta") or {}).get(META_KEY, {}))

    def set_index_meta(self, name: str, meta: Mapping[str, Any]) -> None:
        body = {"_meta": {META_KEY: dict(meta)}}  # put_mapping merges _meta into the mapping
        self._call(
            f"put mapping {name}", lambda: self.client.indices.put_mapping(index=name, body=body)
        )

    def list_indices(self, pattern: str) -> list[IndexInfo]:
        response = self._call(
            f"get {pattern}",
            lambda: self.client.indices.get(
                index=pattern, ignore_unavailable=True, allow_no_indices=True
            ),
        )
        out = []
        for name, info in response.items():
            if not fnmatch.fnmatchcase(name, pattern):
                continue
            settings = info.get("settings", {}).get("index", {})
            meta = (info.get("mappings", {}).get("_meta") or {}).get(META_KEY, {})
            created = int(settings.get("creation_date", 0) or 0)
            out.append(IndexInfo(name, created, dict(meta), sorted(info.get("aliases") or {})))
        return sorted(out, key=lambda i: i.name)


def _hit(raw: Mapping[str, Any]) -> Hit:
    return Hit(str(raw["_id"]), float(raw.get("_score") or 0.0), dict(raw.get("_source") or {}))


def _merge(into: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
