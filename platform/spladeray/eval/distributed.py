"""Corpus encoding on a Ray cluster for the in-memory retrievers, through the one corpus encoder.

``ActorPoolEncoder(factory, kind)`` is an :data:`~spladeray.retrieval.base.EncodeFn`: called with
a list of texts it returns the same matrix the in-process encoder would (a CSR matrix for sparse
models, a dense array for dense ones), rows in input order. The actor pool is
:func:`spladeray.index.encoding.encode_dataset`, which negative mining uses as well. Only the
in-memory (exact) systems use this, since they hold the whole matrix by design; index-backed
systems stream into their index instead (:mod:`spladeray.eval.indexed`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from spladeray.index.encoding import DenseFactory, SparseFactory, collect, encode_dataset

__all__ = ["ActorPoolEncoder", "DenseFactory", "SparseFactory"]


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
        encoded = encode_dataset(
            ds,
            self.factory,
            self.kind,
            num_actors=self.num_actors,
            batch_size=self.batch_size,
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
        )
        return collect(encoded, len(texts), self.kind)
