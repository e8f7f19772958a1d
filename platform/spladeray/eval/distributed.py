"""Corpus encoding on a Ray cluster: a Ray Data actor pool, each actor holding one encoder.

``ActorPoolEncoder(factory, kind)`` is an :data:`~spladeray.retrieval.base.EncodeFn`: called with
a list of texts it returns the same matrix the in-process encoder would (a CSR matrix for sparse
models, a dense array for dense ones), rows in input order. ``factory`` is a picklable callable
run once inside each actor to build the encoder, so the model is loaded where it runs (on a GPU
when the actor has one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)


class SparseFactory:
    """Builds a :class:`SpladeEncoder` from a ``ModelConfig`` (or returns a given encoder)."""

    def __init__(self, model_cfg=None, encoder=None) -> None:
        if (model_cfg is None) == (encoder is None):
            raise ValueError("give exactly one of model_cfg and encoder")
        self.model_cfg, self.encoder = model_cfg, encoder

    def __call__(self) -> Callable[[list[str]], sp.csr_matrix]:
        encoder = self.encoder
        if encoder is None:
            from spladeray.model import load_encoder_from_config

            encoder = load_encoder_from_config(self.model_cfg)
        return lambda texts: encoder.encode_csr(texts, "document")


class DenseFactory:
    """Builds a :class:`spladeray.retrieval.DenseModel` from its config section."""

    def __init__(self, dense_cfg) -> None:
        self.dense_cfg = dense_cfg

    def __call__(self) -> Callable[[list[str]], np.ndarray]:
        from spladeray.retrieval import DenseModel

        model = DenseModel.from_config(self.dense_cfg)
        return lambda texts: model.encode(texts, "document")


class _EncodeActor:
    """One Ray Data actor: builds the encoder once, then encodes batches of ``text``."""

    def __init__(self, factory: Callable, kind: str, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.encode = factory()
        self.kind = kind

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        texts = [str(t) for t in batch["text"]]
        out = self.encode(texts)
        if self.kind == "dense":
            return {"row": batch["row"], "embedding": np.asarray(out, dtype=np.float32)}
        csr = sp.csr_matrix(out)
        cuts = csr.indptr
        return {
            "row": batch["row"],
            "indices": [
                csr.indices[cuts[i] : cuts[i + 1]].astype(np.int32) for i in range(len(texts))
            ],
            "values": [
                csr.data[cuts[i] : cuts[i + 1]].astype(np.float32) for i in range(len(texts))
            ],
            "width": np.full(len(texts), csr.shape[1], dtype=np.int64),
        }


class ActorPoolEncoder:
    """Encode texts with ``num_actors`` Ray Data actors; see the module docstring."""

    def __init__(
        self,
        factory: Callable,
        kind: Literal["sparse", "dense"],
        *,
        num_actors: int = 2,
        batch_size: int = 64,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
    ) -> None:
        if kind not in ("sparse", "dense"):
            raise ValueError(f"kind must be 'sparse' or 'dense', got {kind!r}")
        self.factory, self.kind = factory, kind
        self.num_actors, self.batch_size = num_actors, batch_size
        self.num_cpus, self.num_gpus = num_cpus, num_gpus

    def __call__(self, texts: Sequence[str]):
        import ray.data

        texts = list(texts)
        ds = ray.data.from_items(
            [{"row": i, "text": t} for i, t in enumerate(texts)],
            override_num_blocks=max(1, min(len(texts) // self.batch_size + 1, 4 * self.num_actors)),
        )
        ds = ds.map_batches(
            _EncodeActor,
            fn_constructor_kwargs={
                "factory": self.factory,
                "kind": self.kind,
                "threads": int(self.num_cpus),
            },
            compute=ray.data.ActorPoolStrategy(size=self.num_actors),
            batch_size=self.batch_size,
            batch_format="numpy",
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
        )
        rows: list[int] = []
        parts: list[Any] = []
        width = 0
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
            rows.extend(int(r) for r in batch["row"])
            if self.kind == "dense":
                parts.append(np.asarray(batch["embedding"]))
            else:
                width = int(batch["width"][0])
                parts.extend(zip(batch["indices"], batch["values"], strict=True))
        order = np.argsort(np.asarray(rows, dtype=np.int64), kind="stable")
        if len(order) != len(texts):
            raise RuntimeError(f"encoded {len(order)} of {len(texts)} texts")
        if self.kind == "dense":
            return np.concatenate(parts)[order]
        indptr = np.zeros(len(texts) + 1, dtype=np.int64)
        ordered = [parts[i] for i in order]
        np.cumsum([len(ix) for ix, _ in ordered], out=indptr[1:])
        indices = np.concatenate([np.asarray(ix, dtype=np.int32) for ix, _ in ordered])
        values = np.concatenate([np.asarray(v, dtype=np.float32) for _, v in ordered])
        return sp.csr_matrix((values, indices, indptr), shape=(len(texts), width))
