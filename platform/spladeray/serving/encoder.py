"""The encoder deployment: one model per replica, dynamic batching, separate query/doc paths.

Each posted text is one ``@serve.batch`` item, so a model call packs texts from many requests
(up to ``max_batch_size`` texts, waiting at most ``batch_wait_timeout_s``). Both knobs arrive as
``user_config`` and change through :meth:`EncoderDeployment.reconfigure` without a restart.
Queries have their own batch queue (short wait: they are latency-bound); a doc-only
(inference-free) model weighs queries by IDF lookups and never runs the transformer for them.

The model runs in a worker thread so the replica's event loop keeps accepting requests (and
filling the next batch) while a batch is on the CPU/GPU.

**Model multiplexing.** Besides the configured model (``model.path``, loaded at start), a
replica serves other models by path through Serve model multiplexing: a request sent with
``handle.options(multiplexed_model_id=<model path>)`` is encoded by that model, loaded on first
use (same ``model:`` settings and the same random-head check as the configured one) and kept in
an LRU of :data:`MAX_EXTRA_MODELS` per replica. Serve splits batches by model id, so a batch
never mixes models. The ingress uses this to encode with the model that built the index an
OpenSearch alias points to (see :mod:`spladeray.serving.api`); an empty id (every request when
no alias is involved) means the configured model.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import numpy as np
from ray import serve

from spladeray.serving.metrics import ENCODER_RAY_METRICS, RayMetrics

logger = logging.getLogger(__name__)

MAX_EXTRA_MODELS = 2
"""Models besides the configured one kept per replica (old + new during a switch)."""

BATCH_KEYS = (
    "max_batch_size",
    "batch_wait_timeout_s",
    "query_max_batch_size",
    "query_batch_wait_timeout_s",
)


def batch_user_config(serve_cfg) -> dict[str, Any]:
    """The encoder's ``user_config`` from a :class:`~spladeray.config.ServeConfig`."""
    return {key: getattr(serve_cfg, key) for key in BATCH_KEYS}


class ModelLoadError(RuntimeError):
    """A multiplexed model (named by an index's ``_meta``) could not be loaded or is refused."""


def load_servable_encoder(cfg, path: str | None = None, *, device: str | None = None):
    """Load the configured model (or the model at ``path`` with the same ``model:`` settings);
    refuse a random projection head unless ``model.allow_random_head``.

    ``device`` defaults to ``model.device`` with ``auto`` resolved by
    :func:`spladeray.raycluster.resolve_device`: CUDA only in a replica that holds a GPU.
    """
    from spladeray.model import load_encoder_from_config
    from spladeray.raycluster import resolve_device

    update = {"device": device or str(resolve_device(cfg.model.device))}
    if path is not None:
        update["path"] = str(path)
    encoder = load_encoder_from_config(cfg.model.model_copy(update=update))
    encoder.check_servable(cfg.model.allow_random_head)
    return encoder


def _wait_for_file(path: str, poll_s: float = 0.1) -> None:
    """Block until ``path`` exists: a test holds a replica in "loading" for as long as it likes
    (a fixed sleep would make what the test sees depend on how loaded the machine is)."""
    logger.info("encoder replica waits for load gate %s", path)
    while not os.path.exists(path):
        time.sleep(poll_s)


@serve.deployment(name="Encoder")
class EncoderDeployment:
    """Batched SPLADE encoding; returns, per text, the vector and accounting for metrics."""

    def __init__(self, cfg, load_gate: str | None = None) -> None:
        import torch

        self.cfg = cfg
        self.encoder = None
        if cfg.serve.torch_threads:
            torch.set_num_threads(cfg.serve.torch_threads)
        if load_gate:  # drills and tests: the model loads only once this file exists
            _wait_for_file(load_gate)
        self.encoder = load_servable_encoder(cfg)
        self.default_model = str(cfg.model.path)
        self.metrics = RayMetrics(ENCODER_RAY_METRICS)
        self.batching: dict[str, Any] = {}
        self.reconfigure(batch_user_config(cfg.serve))
        self.loaded_at = time.time()
        logger.info("encoder replica %d ready: %s", os.getpid(), cfg.model.path)

    # ------------------------------------------------------------------ Serve hooks
    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply batching settings (``user_config``) in place."""
        unknown = set(user_config) - set(BATCH_KEYS)
        if unknown:
            raise ValueError(f"unknown encoder user_config keys: {sorted(unknown)}")
        merged = {**self.batching, **user_config}
        for key in ("max_batch_size", "query_max_batch_size"):
            if key in merged and (not isinstance(merged[key], int) or merged[key] < 1):
                raise ValueError(f"{key} must be a positive integer")
        for key in ("batch_wait_timeout_s", "query_batch_wait_timeout_s"):
            if key in merged and (not isinstance(merged[key], int | float) or merged[key] < 0):
                raise ValueError(f"{key} must be a number >= 0")
        self.batching = merged
        self._document_batch.set_max_batch_size(merged["max_batch_size"])
        self._document_batch.set_batch_wait_timeout_s(merged["batch_wait_timeout_s"])
        self._query_batch.set_max_batch_size(merged["query_max_batch_size"])
        self._query_batch.set_batch_wait_timeout_s(merged["query_batch_wait_timeout_s"])

    def check_health(self) -> None:
        if self.encoder is None:
            raise RuntimeError("model not loaded")

    # ------------------------------------------------------------------ models
    @serve.multiplexed(max_num_models_per_replica=MAX_EXTRA_MODELS)
    async def _load_model(self, model_id: str):
        """Load the model at path ``model_id`` (Serve keeps an LRU of them per replica)."""
        logger.info("encoder replica %d loading multiplexed model %s", os.getpid(), model_id)
        try:
            return await asyncio.to_thread(load_servable_encoder, self.cfg, model_id)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot serve model {model_id!r}: {type(exc).__name__}: {exc}"
            ) from None

    async def _model(self):
        """The encoder for the current request (or batch): its multiplexed model id, else the
        configured model."""
        model_id = serve.get_multiplexed_model_id()
        if not model_id or model_id == self.default_model:
            return self.encoder
        return await self._load_model(model_id)

    # ------------------------------------------------------------------ API
    async def ready(self) -> dict[str, Any]:
        """Model facts for ``/healthz`` (answered only once the model is loaded)."""
        enc = self.encoder
        return {
            "model": str(self.cfg.model.path),
            "doc_only": bool(enc.doc_only),
            "random_head": bool(enc.random_head),
            "vocab_size": int(enc.vocab_size),
            "device": str(enc.device),
            "batching": dict(self.batching),
            "pid": os.getpid(),
            "loaded_at": self.loaded_at,
        }

    async def encode(self, texts: list[str], kind: str = "document") -> list[dict[str, Any]]:
        """``[{"vector", "tokens", "batch", "first"}]`` in input order."""
        if kind not in ("document", "query"):
            raise ValueError(f"kind must be 'document' or 'query', got {kind!r}")
        enc = await self._model()  # loads a multiplexed model before its texts join a batch
        if kind == "query" and enc.doc_only:  # inference-free: no transformer
            return self._encode_now(list(texts), "query", enc)
        method = self._query_batch if kind == "query" else self._document_batch
        return list(await asyncio.gather(*(method(t) for t in texts)))

    # ------------------------------------------------------------------ batching
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _document_batch(self, texts: list[str]) -> list[dict[str, Any]]:
        enc = await self._model()  # batches are split by multiplexed model id
        return await asyncio.to_thread(self._encode_now, texts, "document", enc)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _query_batch(self, texts: list[str]) -> list[dict[str, Any]]:
        enc = await self._model()
        return await asyncio.to_thread(self._encode_now, texts, "query", enc)

    def _encode_now(self, texts: list[str], kind: str, enc=None) -> list[dict[str, Any]]:
        enc = enc if enc is not None else self.encoder
        matrix = enc.encode_csr(texts, kind, batch_size=max(len(texts), 1))
        vectors = enc.to_dicts(matrix)
        max_length = enc.max_query_length if kind == "query" else enc.max_document_length
        if kind == "document" and enc.document_stride is not None:  # chunked: every window
            from spladeray.model.chunking import document_windows

            windows, owner = document_windows(enc.tokenizer, texts, max_length, enc.document_stride)
            lengths = np.bincount(owner, [len(w) for w in windows], len(texts)).astype(int).tolist()
        else:
            lengths = [
                len(ids)
                for ids in enc.tokenizer(
                    texts,
                    truncation=True,
                    max_length=max_length,
                    add_special_tokens=not (kind == "query" and enc.doc_only),
                )["input_ids"]
            ]
        n = len(texts)
        self.metrics.inc("spladeray_documents_encoded", n, kind=kind)
        self.metrics.inc("spladeray_tokens", sum(lengths), kind=kind)
        self.metrics.observe("spladeray_encode_batch_size", n, kind=kind)
        return [
            {"vector": v, "tokens": t, "batch": n, "first": i == 0}
            for i, (v, t) in enumerate(zip(vectors, lengths, strict=True))
        ]
