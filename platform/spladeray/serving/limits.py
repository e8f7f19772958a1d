"""Request limits: body bytes (413), documents per request (413), text length (truncated),
document size (failed by id), and the limits OpenSearch enforces on a query (warned about).

The body limit is an ASGI middleware that reads at most ``max_bytes`` before the app parses
anything, so an oversized upload is refused with a JSON 413 instead of being buffered whole.
Long texts are cut to ``max_chars`` characters (the tokenizer truncates to the model's length
anyway): a 1 MB text is encoded from its beginning, never failed.

A query vector is brought within OpenSearch's limits by
:func:`spladeray.index.opensearch.limit_query` before any backend sees it (every backend, so
answers do not depend on the backend); :func:`query_warnings` turns what changed into the
``warnings`` of the ``/search`` response.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from spladeray.index.opensearch import (
    MAX_FEATURE_NAME_BYTES,
    MAX_QUERY_WEIGHT,
    TEXT_FIELDS,
    QueryLimitReport,
)

WORD = re.compile(r"\w+")

Scope = dict[str, Any]


class BodyLimitMiddleware:
    """Refuse request bodies larger than ``get_limit()`` bytes with ``413`` JSON."""

    def __init__(self, app, get_limit: Callable[[], int]) -> None:
        self.app = app
        self.get_limit = get_limit

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        limit = self.get_limit()
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _reject(send, limit)
            return
        chunks: list[bytes] = []
        total = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > limit:
                await _reject(send, limit)
                return
            chunks.append(body)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _reject(send, limit: int) -> None:
    body = json.dumps(
        {
            "error": f"request body is larger than the limit of {limit} bytes (serve.max_request_bytes)"
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def truncate_texts(texts: Sequence[str], max_chars: int) -> tuple[list[str], list[int]]:
    """``(texts cut to max_chars, indices that were cut)``."""
    out, cut = [], []
    for i, text in enumerate(texts):
        if len(text) > max_chars:
            out.append(text[:max_chars])
            cut.append(i)
        else:
            out.append(text)
    return out, cut


def query_warnings(report: QueryLimitReport, max_terms: int) -> list[dict[str, Any]]:
    """``[{"code", "count", "message"}]`` for each way :func:`limit_query` changed a query."""
    out = []

    def warn(code: str, count: int, message: str) -> None:
        if count:
            out.append({"code": code, "count": count, "message": message})

    warn(
        "query_terms_pruned",
        report.pruned,
        f"the query had {report.terms} terms; the {report.pruned} lightest were dropped to "
        f"keep {max_terms} (serve.max_query_terms; OpenSearch's "
        "indices.query.bool.max_clause_count)",
    )
    warn(
        "query_weights_clipped",
        report.clipped,
        f"{report.clipped} query weights were above {MAX_QUERY_WEIGHT:g} and were clipped to it "
        "(rank_feature boosts must be in (0, 64])",
    )
    warn(
        "query_weights_dropped",
        report.bad_weights,
        f"{report.bad_weights} query terms had a weight that is not a finite positive number "
        "and were dropped",
    )
    warn(
        "feature_names_too_long",
        report.long_names,
        f"{report.long_names} query terms were longer than Lucene's limit of "
        f"{MAX_FEATURE_NAME_BYTES} bytes and were dropped",
    )
    warn(
        "feature_names_invalid",
        report.bad_names,
        f"{report.bad_names} query terms were not non-empty strings and were dropped",
    )
    return out


def document_bytes(fields: Mapping[str, Any]) -> int:
    """Size of a document's stored fields as UTF-8 JSON (what the backend stores besides the
    vector)."""
    return len(json.dumps(fields, ensure_ascii=False, default=str).encode("utf-8"))


def lexical_query(text: str, max_clauses: int) -> tuple[str, dict[str, Any] | None]:
    """The BM25 leg's query text within OpenSearch's clause limit, and a warning if it was cut.

    ``multi_match`` over the text fields makes one clause per word and field, so at most
    ``max_clauses // len(TEXT_FIELDS)`` words are kept (words as the standard analyzer roughly
    splits them: runs of letters and digits), the first ones.
    """
    keep = max(1, max_clauses // len(TEXT_FIELDS))
    words = WORD.findall(text)
    if len(words) <= keep:
        return text, None
    dropped = len(words) - keep
    warning = {
        "code": "lexical_query_truncated",
        "count": dropped,
        "message": f"the BM25 query had {len(words)} words; the last {dropped} were dropped to "
        f"keep {keep} ({len(TEXT_FIELDS)} fields each, within serve.max_query_terms)",
    }
    return " ".join(words[:keep]), warning
