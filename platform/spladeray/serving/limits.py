"""Request limits: body bytes (413), documents per request (413), text length (truncated),
document size (failed by id), and the limits OpenSearch enforces on a query (warned about).

The body limit is an ASGI middleware that reads at most ``max_bytes`` before the app parses
anything, so an oversized upload is refused with a JSON 413 instead of being buffered whole.
Long texts are cut to ``max_chars`` characters (the tokenizer truncates to the model's length
anyway): a 1 MB text is encoded from its beginning, never failed.

A query vector is brought within OpenSearch's limits by
:func:`spladeray.index.search.limit` before any backend sees it (every backend, so answers do
not depend on the backend); :func:`~spladeray.index.search.query_warnings` turns what changed
into the ``warnings`` of the ``/search`` response.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# the query limits live in the one search path; re-exported for the routes and older callers
from spladeray.index.search import WORD, lexical_query, query_warnings

__all__ = [
    "WORD",
    "BodyLimitMiddleware",
    "document_bytes",
    "lexical_query",
    "query_warnings",
    "truncate_texts",
]

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


def document_bytes(fields: Mapping[str, Any]) -> int:
    """Size of a document's stored fields as UTF-8 JSON (what the backend stores besides the
    vector)."""
    return len(json.dumps(fields, ensure_ascii=False, default=str).encode("utf-8"))
