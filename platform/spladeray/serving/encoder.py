"""The batched encoder inside each replica: one model per replica (plus multiplexed ones),
dynamic batching by count and by token budget, separate query and document queues.

The Serve deployment (:class:`spladeray.serving.api.EncoderIngress`) owns one
:class:`BatchedEncoder`; the HTTP routes call :meth:`BatchedEncoder.encode` in the same process,
so a request makes one hop (proxy -> replica), not two.

**Batching.** Each text of a request is one ``@serve.batch`` item, so a model call packs texts
from many requests: up to ``max_batch_size`` texts (``query_max_batch_size`` for queries),
waiting at most ``batch_wait_timeout_s``. A batch is then sorted by length (longest first) and
cut into sub-batches whose padded size, ``texts x longest text`` in tokens, stays within
``max_batch_tokens`` (:func:`plan_batches`): a few long documents never make one huge padded
tensor, and short texts are not padded to a long one. Texts are tokenized when they arrive (on
the event loop, while the previous batch runs on the model), which gives the lengths for the
budget and the token counts for the metrics. All knobs arrive as ``user_config`` and change
through :meth:`BatchedEncoder.reconfigure` without a restart.

The model runs in a worker thread so the replica's event loop keeps accepting requests (and
filling the next batch) while a batch is on the CPU/GPU. A doc-only (inference-free) model
weighs queries by IDF lookups: those never enter a batch queue and never wait on the model.

**Model multiplexing.** Besides the configured model (``model.path``, loaded at start), a
replica encodes with other models by path: :meth:`BatchedEncoder.encode` takes a model id (a
model path; ``""`` = the configured model), loads it on first use through Serve's
``@serve.multiplexed`` LRU (:data:`MAX_EXTRA_MODELS` per replica; same ``model:`` settings and
random-head check as the configured model), and splits every batch by model, so one model call
never mixes models. Such a model is served only from ``serve.model_roots`` and only when its hash
matches the ``model_files_sha256`` its index records (:meth:`BatchedEncoder.expect`; see
:mod:`spladeray.serving.security`), so an index's ``_meta`` cannot make a replica load any
path. The routes use this to encode with the model that built the index a rollout alias points
to (see :mod:`spladeray.serving.api`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ray import serve

from spladeray.serving.security import check_model_path, model_roots, verify_model_hash

logger = logging.getLogger(__name__)

MAX_EXTRA_MODELS = 2
"""Models besides the configured one kept per replica (old + new during a switch)."""

BATCH_KEYS = (
    "max_batch_size",
    "batch_wait_timeout_s",
    "query_max_batch_size",
    "query_batch_wait_timeout_s",
    "max_batch_tokens",
)


def batch_user_config(serve_cfg) -> dict[str, Any]:
    """The deployment's ``user_config`` from a :class:`~spladeray.config.ServeConfig`."""
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


def plan_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Cut a batch into model calls under a padded-token budget.

    Returns lists of indices into ``lengths``: longest first, each list as long as possible
    while ``len(list) * longest`` (the padded tensor's size) stays within ``max_tokens``. A text
    longer than the budget on its own goes alone. Every index appears exactly once.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    plan: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]  # sorted: the first is longest
        if current and (len(current) + 1) * max(width, 1) > max_tokens:
            plan.append(current)
            current = []
        current.append(i)
    if current:
        plan.append(current)
    return plan


@dataclass(frozen=True)
class Encoded:
    """One text's vector and the number of input tokens it took (after truncation)."""

    vector: dict[str, float]
    tokens: int


def _wait_for_file(path: str, poll_s: float = 0.1) -> None:
    """Block until ``path`` exists: a test holds a replica in "loading" for as long as it likes
    (a fixed sleep would make what the test sees depend on how loaded the machine is)."""
    logger.info("replica waits for load gate %s", path)
    while not os.path.exists(path):
        time.sleep(poll_s)


class BatchedEncoder:
    """Batched SPLADE encoding inside one replica (see the module docstring).

    ``metrics`` receives ``record_batch(kind, texts, tokens)`` once per model call (and per
    doc-only query lookup), so counters count every text and every call exactly once.
    """

    def __init__(self, cfg, metrics, load_gate: str | None = None) -> None:
        import torch

        self.cfg = cfg
        self.metrics = metrics
        if cfg.serve.torch_threads:
            torch.set_num_threads(cfg.serve.torch_threads)
        if load_gate:  # drills and tests: the model loads only once this file exists
            _wait_for_file(load_gate)
        self.model = load_servable_encoder(cfg)
        self.default_model = str(cfg.model.path)
        self.model_roots = model_roots(cfg)
        self._expected_hashes: dict[str, str | None] = {}
        self.batching: dict[str, Any] = {}
        self.reconfigure(batch_user_config(cfg.serve))
        # Every model call runs on this one thread, off the event loop: one model computes at a
        # time anyway (the CPU's or GPU's threads are the model's), and one thread keeps torch's
        # allocations in one malloc arena. asyncio.to_thread spread them over its pool's threads,
        # and the replica's RSS grew 40% in 60 s of bench/load.py.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self.loaded_at = time.time()
        logger.info("encoder in replica %d ready: %s", os.getpid(), cfg.model.path)

    # ------------------------------------------------------------------ settings
    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply batching settings (``user_config``) in place; bad keys or values are refused."""
        unknown = set(user_config) - set(BATCH_KEYS)
        if unknown:
            raise ValueError(f"unknown encoder user_config keys: {sorted(unknown)}")
        merged = {**self.batching, **user_config}
        for key in ("max_batch_size", "query_max_batch_size", "max_batch_tokens"):
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

    def info(self) -> dict[str, Any]:
        """Model facts for ``/healthz``."""
        enc = self.model
        return {
            "model": self.default_model,
            "doc_only": bool(enc.doc_only),
            "random_head": bool(enc.random_head),
            "vocab_size": int(enc.vocab_size),
            "device": str(enc.device),
            "batching": dict(self.batching),
            # names of the serve.env_vars in effect in this process; never the values (a user
            # may put a secret there)
            "env": sorted(k for k, v in self.cfg.serve.env_vars.items() if os.environ.get(k) == v),
            "pid": os.getpid(),
            "loaded_at": self.loaded_at,
        }

    # ------------------------------------------------------------------ models
    def expect(self, model_id: str, model_hash: str | None) -> None:
        """Record the hash an index's ``_meta`` gives for ``model_id`` (checked on its load)."""
        self._expected_hashes[model_id] = model_hash

    @serve.multiplexed(max_num_models_per_replica=MAX_EXTRA_MODELS)
    async def _load_model(self, model_id: str):
        """Load the model at path ``model_id`` (Serve keeps an LRU of them per replica), once it
        is under ``serve.model_roots`` and hashes to what its index recorded."""
        refusal = check_model_path(model_id, self.model_roots)
        if refusal is not None:
            raise ModelLoadError(f"refused model {model_id!r}: {refusal}")
        logger.info("replica %d loading multiplexed model %s", os.getpid(), model_id)
        expected = self._expected_hashes.get(model_id)

        def load():
            verify_model_hash(model_id, expected)
            return load_servable_encoder(self.cfg, model_id)

        try:
            return await asyncio.to_thread(load)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot serve model {model_id!r}: {type(exc).__name__}: {exc}"
            ) from None

    async def get_model(self, model_id: str = ""):
        """The encoder for ``model_id`` (a model path); ``""`` is the configured model."""
        if not model_id or model_id == self.default_model:
            return self.model
        return await self._load_model(model_id)

    # ------------------------------------------------------------------ encoding
    async def encode(
        self, texts: list[str], kind: str = "document", model: str = ""
    ) -> list[Encoded]:
        """Vectors for ``texts`` in input order, each text batched with other requests' texts.

        Raises :class:`ModelLoadError` when ``model`` cannot be loaded or is refused.
        """
        if kind not in ("document", "query"):
            raise ValueError(f"kind must be 'document' or 'query', got {kind!r}")
        enc = await self.get_model(model)  # loaded before its texts join a batch
        if kind == "query" and enc.doc_only:  # inference-free: an IDF lookup, no batch queue
            return self._encode_now(enc, list(texts), "query", self._lengths(enc, texts, kind))
        lengths = self._lengths(enc, texts, kind)
        method = self._query_batch if kind == "query" else self._document_batch
        return list(
            await asyncio.gather(
                *(method(t, model, n) for t, n in zip(texts, lengths, strict=True))
            )
        )

    def _lengths(self, enc, texts: Sequence[str], kind: str) -> list[int]:
        """Input tokens per text after truncation (what the model sees). A chunked document
        (``model.document_stride``) counts every window's tokens, so the token budget of
        :func:`plan_batches` sees its real cost, not its first window's."""
        max_length = enc.max_query_length if kind == "query" else enc.max_document_length
        if kind == "document" and enc.document_stride is not None:
            from spladeray.model.chunking import document_windows

            windows, owner = document_windows(
                enc.tokenizer, list(texts), max_length, enc.document_stride
            )
            lengths = [0] * len(texts)
            for window, text in zip(windows, owner, strict=True):
                lengths[text] += len(window)
            return lengths
        ids = enc.tokenizer(
            list(texts),
            truncation=True,
            max_length=max_length,
            add_special_tokens=not (kind == "query" and enc.doc_only),
        )["input_ids"]
        return [len(x) for x in ids]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _document_batch(
        self, texts: list[str], models: list[str], lengths: list[int]
    ) -> list[Encoded]:
        return await self._run_batch("document", texts, models, lengths)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _query_batch(
        self, texts: list[str], models: list[str], lengths: list[int]
    ) -> list[Encoded]:
        return await self._run_batch("query", texts, models, lengths)

    async def _run_batch(
        self, kind: str, texts: list[str], models: list[str], lengths: list[int]
    ) -> list[Encoded]:
        """Split by model, then by token budget; run every model call in one worker thread."""
        groups: dict[str, list[int]] = {}
        for i, model_id in enumerate(models):
            groups.setdefault(model_id, []).append(i)
        budget = self.batching["max_batch_tokens"]
        calls = []
        for model_id, members in groups.items():
            enc = await self.get_model(model_id)
            for part in plan_batches([lengths[i] for i in members], budget):
                calls.append((enc, [members[j] for j in part]))

        def run() -> list[Encoded]:
            out: list[Encoded | None] = [None] * len(texts)
            for enc, idx in calls:
                encoded = self._encode_now(
                    enc, [texts[i] for i in idx], kind, [lengths[i] for i in idx]
                )
                for i, item in zip(idx, encoded, strict=True):
                    out[i] = item
            return out  # type: ignore[return-value]

        return await asyncio.get_running_loop().run_in_executor(self._model_thread, run)

    def _encode_now(self, enc, texts: list[str], kind: str, lengths: list[int]) -> list[Encoded]:
        """One model call (or one IDF lookup) for ``texts``, with its metrics."""
        vectors = enc.to_dicts(enc.encode_csr(texts, kind, batch_size=max(len(texts), 1)))
        self.metrics.record_batch(kind, len(texts), sum(lengths))
        return [Encoded(v, n) for v, n in zip(vectors, lengths, strict=True)]
