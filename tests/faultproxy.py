"""A fault-injecting HTTP proxy in front of an OpenSearch-compatible server (osmem), for tests.

Hand-written (no library does this for OpenSearch's ``_bulk``): a ``ThreadingHTTPServer`` that
forwards every request to the upstream with ``http.client``, except in the mode it is set to:

- ``pass``: forward as is.
- ``throttle``: ``_bulk`` items for which ``rule(doc_id, attempt)`` is true are answered with
  status 429 (``es_rejected_execution_exception``) **without being forwarded**; the other items
  go upstream in one ``_bulk`` and their real answers are merged back in order. So an item the
  client sees as 429 was never indexed (the proxy keeps the truth). Other requests pass.
- ``unavailable``: every request is answered ``503`` without being forwarded.
- ``drop``: the connection is closed without an answer (the client sees a reset), not forwarded.
- ``refuse``: the listening socket is closed (connections are refused) until the mode changes;
  connections already open are dropped. The upstream keeps its data: osmem is in-memory, so a
  restart would empty it -- this is how a test makes the backend "go away" and come back.

``set(mode, after_bulk=n)`` keeps passing until ``n`` more ``_bulk`` requests have been forwarded,
then switches (deterministic "fails in the middle of a job"). ``stats`` counts what happened;
``forwarded_ids`` holds every bulk item id that reached the upstream.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

MODES = ("pass", "throttle", "unavailable", "drop", "refuse")
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class FaultProxy:
    """See the module docstring. ``url`` is where clients connect."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.mode = "pass"
        self.rule: Callable[[str, int], bool] = lambda doc_id, attempt: False
        self.stats: Counter[str] = Counter()
        self.forwarded_ids: set[str] = set()
        self._attempts: Counter[str] = Counter()
        self._pending: tuple[int, str] | None = None  # (bulk requests left to pass, next mode)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._listen()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ control
    def set(self, mode: str, *, after_bulk: int | None = None, rule=None) -> None:
        """Switch to ``mode`` now, or after ``after_bulk`` more ``_bulk`` requests passed."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        with self._lock:
            if rule is not None:
                self.rule = rule
            if after_bulk:
                self._pending = (after_bulk, mode)
                self._apply("pass")
            else:
                self._pending = None
                self._apply(mode)

    def _apply(self, mode: str) -> None:  # with the lock held
        was, self.mode = self.mode, mode
        if mode == "refuse" and was != "refuse":
            server, self._server = self._server, None
            threading.Thread(target=_stop, args=(server,), daemon=True).start()
        elif mode != "refuse" and self._server is None:
            self._listen()

    def _listen(self) -> None:
        handler = type("Handler", (_Handler,), {"proxy": self})
        server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            self.mode = "refuse"
        if server is not None:
            _stop(server)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ per request
    def mode_for(self, is_bulk: bool) -> str:
        with self._lock:
            self.stats["requests"] += 1
            mode = self.mode
            if is_bulk and self._pending is not None and mode == "pass":
                left, then = self._pending
                if left <= 0:
                    self._pending = None
                    self._apply(then)
                    mode = then
                else:
                    self._pending = (left - 1, then)
            return mode

    def attempt(self, doc_id: str) -> int:
        with self._lock:
            self._attempts[doc_id] += 1
            return self._attempts[doc_id]

    def forward(self, method: str, path: str, headers, body: bytes) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            response = conn.getresponse()
            data = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_HEADERS]
            return response.status, kept, data
        finally:
            conn.close()


def _stop(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


def _bulk_items(body: bytes) -> list[tuple[str, str, dict, bytes]]:
    """``(op, doc id, action meta, the item's NDJSON lines)`` for each item of a ``_bulk`` body."""
    lines = [line for line in body.split(b"\n") if line.strip()]
    items, i = [], 0
    while i < len(lines):
        action = json.loads(lines[i])
        op = next(iter(action))
        meta = action[op] or {}
        size = 1 if op == "delete" else 2
        items.append((op, str(meta.get("_id")), meta, b"\n".join(lines[i : i + size]) + b"\n"))
        i += size
    return items


def _throttled(op: str, doc_id: str, meta: dict) -> dict:
    return {
        op: {
            "_index": meta.get("_index"),
            "_id": doc_id,
            "status": 429,
            "error": {
                "type": "es_rejected_execution_exception",
                "reason": "rejected by the fault proxy (injected 429: queue full)",
            },
        }
    }


class _Handler(BaseHTTPRequestHandler):
    proxy: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args) -> None:  # quiet
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        is_bulk = "/_bulk" in self.path.split("?")[0]
        proxy = self.proxy
        mode = proxy.mode_for(is_bulk)
        if mode in ("drop", "refuse"):
            proxy.stats["dropped"] += 1
            self.close_connection = True
            return
        if mode == "unavailable":
            proxy.stats["answered_503"] += 1
            error = {"type": "unavailable", "reason": "injected by the fault proxy"}
            self._send(503, [], json.dumps({"error": error, "status": 503}).encode())
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        if not is_bulk:
            self._send(*proxy.forward(self.command, self.path, headers, body))
            return
        proxy.stats["bulk_requests"] += 1
        items = _bulk_items(body)
        answers: list[dict | None] = []
        forward = []
        for op, doc_id, meta, lines in items:
            proxy.stats["bulk_items"] += 1
            if mode == "throttle" and proxy.rule(doc_id, proxy.attempt(doc_id)):
                proxy.stats["bulk_items_throttled"] += 1
                answers.append(_throttled(op, doc_id, meta))
            else:
                answers.append(None)
                forward.append((doc_id, lines))
        upstream: dict = {"took": 0, "errors": False, "items": []}
        if forward:
            status, kept, data = proxy.forward(
                self.command, self.path, headers, b"".join(lines for _, lines in forward)
            )
            if status != 200:
                self._send(status, kept, data)
                return
            upstream = json.loads(data)
            with proxy._lock:
                proxy.forwarded_ids.update(doc_id for doc_id, _ in forward)
                proxy.stats["bulk_items_forwarded"] += len(forward)
        real = iter(upstream["items"])
        merged = [a if a is not None else next(real) for a in answers]
        errors = bool(upstream.get("errors")) or any(a is not None for a in answers)
        out = {"took": upstream.get("took", 0), "errors": errors, "items": merged}
        self._send(200, [("Content-Type", "application/json")], json.dumps(out).encode())

    def _send(self, status: int, headers: list, data: bytes) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        if not any(k.lower() == "content-type" for k, _ in headers):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle
