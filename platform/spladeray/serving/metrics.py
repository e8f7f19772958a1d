"""Prometheus metrics beyond Serve's own: documents encoded, tokens, batch sizes, documents
indexed and failed, request latency.

Two views of the same numbers:

- cluster-wide, through Ray's metrics pipeline (``ray.serve.metrics``, tagged with deployment
  and replica): scrape every node's Ray metrics port, as for Serve's built-in metrics;
- per replica, in Prometheus text at ``GET /metrics`` (``prometheus_client``): the batched
  encoder records each model call once, in the same process as the HTTP routes.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

logger = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RayMetrics:
    """``ray.serve.metrics`` instruments, created lazily inside a replica; no-ops elsewhere."""

    def __init__(self, specs: dict[str, tuple[str, str, tuple[str, ...]]]) -> None:
        self._specs = specs
        self._made: dict[str, Any] = {}
        self._broken = False

    def _get(self, name: str):
        if self._broken:
            return None
        if name not in self._made:
            try:
                from ray.serve import metrics as serve_metrics

                kind, description, tags = self._specs[name]
                if kind == "counter":
                    self._made[name] = serve_metrics.Counter(
                        name, description=description, tag_keys=tags
                    )
                else:
                    self._made[name] = serve_metrics.Histogram(
                        name,
                        description=description,
                        boundaries=list(BATCH_BUCKETS),
                        tag_keys=tags,
                    )
            except Exception as exc:  # not in a replica, or metrics disabled
                logger.debug("ray metrics unavailable: %s", exc)
                self._broken = True
                return None
        return self._made[name]

    def inc(self, name: str, value: float = 1.0, **tags: str) -> None:
        metric = self._get(name)
        if metric is not None and value:
            try:
                metric.inc(value, tags=tags or None)
            except Exception as exc:  # metrics must never fail a request
                logger.debug("ray metric %s: %s", name, exc)

    def observe(self, name: str, value: float, **tags: str) -> None:
        metric = self._get(name)
        if metric is not None:
            try:
                metric.observe(value, tags=tags or None)
            except Exception as exc:
                logger.debug("ray metric %s: %s", name, exc)


REPLICA_RAY_METRICS = {
    "spladeray_documents_encoded": ("counter", "texts encoded", ("kind",)),
    "spladeray_tokens": ("counter", "input tokens encoded (after truncation)", ("kind",)),
    "spladeray_encode_batch_size": ("histogram", "texts per model call", ("kind",)),
    "spladeray_documents_indexed": ("counter", "documents written to the index", ()),
    "spladeray_documents_failed": ("counter", "documents not indexed (listed by id)", ()),
}


class ReplicaMetrics:
    """The replica's own registry, rendered at ``GET /metrics``, mirrored to Ray's metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.documents_encoded = Counter(
            "spladeray_documents_encoded", "texts encoded", ["kind"], registry=r
        )
        self.tokens = Counter(
            "spladeray_tokens", "input tokens encoded (after truncation)", ["kind"], registry=r
        )
        self.batch_size = Histogram(
            "spladeray_encode_batch_size",
            "texts per model call (dynamic batching)",
            ["kind"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.truncated = Counter(
            "spladeray_texts_truncated", "texts cut to serve.max_text_chars", registry=r
        )
        self.documents_indexed = Counter(
            "spladeray_documents_indexed", "documents written to the index", registry=r
        )
        self.documents_failed = Counter(
            "spladeray_documents_failed", "documents not indexed (listed by id)", registry=r
        )
        self.requests = Counter(
            "spladeray_http_requests", "HTTP requests", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "spladeray_request_seconds",
            "request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ray = RayMetrics(REPLICA_RAY_METRICS)

    def record_batch(self, kind: str, texts: int, tokens: int) -> None:
        """One model call (or one doc-only query lookup) of ``texts`` texts."""
        self.documents_encoded.labels(kind).inc(texts)
        self.tokens.labels(kind).inc(tokens)
        self.batch_size.labels(kind).observe(texts)
        self.ray.inc("spladeray_documents_encoded", texts, kind=kind)
        self.ray.inc("spladeray_tokens", tokens, kind=kind)
        self.ray.observe("spladeray_encode_batch_size", texts, kind=kind)

    def record_index(self, indexed: int, failed: int) -> None:
        self.documents_indexed.inc(indexed)
        self.documents_failed.inc(failed)
        self.ray.inc("spladeray_documents_indexed", indexed)
        self.ray.inc("spladeray_documents_failed", failed)

    def render(self) -> bytes:
        return generate_latest(self.registry)
