"""The one distributed corpus encoder: a Ray Data actor pool, each actor holding one model.

Negative mining (:mod:`spladeray.data.negatives`) and evaluation (:mod:`spladeray.eval`) both
encode corpora with it. :func:`encode_dataset` maps a Ray Dataset of ``row`` / ``text`` (and
``id``) rows through ``num_actors`` :class:`EncodeActor` actors; ``factory`` is a picklable
callable run once inside each actor to build the model, so it is loaded where it runs (on a GPU
when the actor has one): a :class:`~spladeray.model.SpladeEncoder` (``encode_csr``) for
``kind="sparse"``, a :class:`~spladeray.retrieval.DenseModel` (``encode``) for ``"dense"``.

What comes back depends on the ``sink``:

- no sink: the vectors, one row per document (``row`` + ``indices``/``values`` or
  ``embedding``); :func:`collect` puts them in row order as one matrix, in the process that
  calls it. Only callers that hold the whole matrix by design use it (exact in-memory search,
  the mining index that every miner loads), and :data:`DRIVER_DOCS_CAP` bounds them;
- :class:`IndexSink`: each actor writes its batches straight into an index
  (:func:`spladeray.index.open_index`) and returns one summary row per batch: the count, the
  failures by id, and the sparsity aggregates (:class:`~spladeray.eval.sparsity.DocSparsity`).
  Nothing per document reaches the caller, whatever the size of the corpus.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)

DRIVER_DOCS_CAP: int | None = None
"""When set, :func:`collect` and :func:`spladeray.eval.runner.Corpus.load` refuse to hold more
documents than this in the calling process (a guard tests use to prove that a path streams)."""


class DriverCapExceeded(RuntimeError):
    """A caller tried to hold more documents than :data:`DRIVER_DOCS_CAP` in one process."""


def check_driver_cap(n: int, what: str) -> None:
    """Raise :class:`DriverCapExceeded` when ``n`` documents would exceed the cap."""
    if DRIVER_DOCS_CAP is not None and n > DRIVER_DOCS_CAP:
        raise DriverCapExceeded(
            f"{what}: {n} documents would be held in this process "
            f"(spladeray.index.encoding.DRIVER_DOCS_CAP = {DRIVER_DOCS_CAP})"
        )


# ----------------------------------------------------------------------------- factories
class SparseFactory:
    """Builds a :class:`SpladeEncoder` from a ``ModelConfig`` (or returns a given encoder)."""

    def __init__(self, model_cfg=None, encoder=None) -> None:
        if (model_cfg is None) == (encoder is None):
            raise ValueError("give exactly one of model_cfg and encoder")
        self.model_cfg, self.encoder = model_cfg, encoder

    def __call__(self):
        if self.encoder is not None:
            return self.encoder
        from spladeray.model import load_encoder_from_config

        return load_encoder_from_config(self.model_cfg)


class DenseFactory:
    """Builds a :class:`spladeray.retrieval.DenseModel` from its config section."""

    def __init__(self, dense_cfg) -> None:
        self.dense_cfg = dense_cfg

    def __call__(self):
        from spladeray.retrieval import DenseModel

        return DenseModel.from_config(self.dense_cfg)


# ----------------------------------------------------------------------------- sinks
class IndexSink:
    """Writes each encoded batch into ``name`` of the index ``index_cfg`` names (in the actor).

    ``store_text`` stores the text as the ``text`` field (what ``text_search``, hence a hybrid
    search, reads). Returns one summary row per batch (see the module docstring).
    """

    def __init__(self, index_cfg, name: str, *, store_text: bool = False) -> None:
        self.index_cfg, self.name, self.store_text = index_cfg, name, store_text
        self._index = None

    def write(self, model, ids: list[str], texts: list[str], csr: sp.csr_matrix) -> dict:
        from spladeray.eval.sparsity import DocSparsity

        if self._index is None:
            from spladeray.index import open_index

            self._index = open_index(self.index_cfg, tokenizer=model.tokenizer)
        fields = [{"text": t} for t in texts] if self.store_text else None
        result = self._index.add(self.name, ids, model.to_dicts(csr), fields)
        stats = DocSparsity().add(csr)
        return {
            "indexed": np.array([result.indexed], dtype=np.int64),
            "failed": np.array([json.dumps([f.__dict__ for f in result.failed])], dtype=object),
            "sparsity": np.array([json.dumps(stats.to_json())], dtype=object),
        }


# ----------------------------------------------------------------------------- the actor
class EncodeActor:
    """One Ray Data actor: builds the model once, then encodes batches of ``text``."""

    def __init__(self, factory: Callable, kind: str, threads: int, sink=None) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.model = factory()
        self.kind, self.sink = kind, sink

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        texts = [str(t) for t in batch["text"]]
        if self.kind == "dense":
            out = self.model.encode(texts, "document")
            return {"row": batch["row"], "embedding": np.asarray(out, dtype=np.float32)}
        csr = sp.csr_matrix(self.model.encode_csr(texts, "document"))
        if self.sink is not None:
            return self.sink.write(self.model, [str(i) for i in batch["id"]], texts, csr)
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


def encode_dataset(
    ds,
    factory: Callable,
    kind: Literal["sparse", "dense"],
    *,
    num_actors: int = 2,
    batch_size: int = 64,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    sink=None,
):
    """``ds`` (``row``, ``text``[, ``id``]) mapped through the actor pool (lazy, streamed)."""
    import ray.data

    if kind not in ("sparse", "dense"):
        raise ValueError(f"kind must be 'sparse' or 'dense', got {kind!r}")
    if sink is not None and kind != "sparse":
        raise ValueError("only sparse vectors are written into an index")
    from spladeray.raycluster import check_capacity

    check_capacity(  # a whole pool starts before data flows: Ray Data would wait forever
        f"the corpus encoder ({num_actors} actors)",
        cpus=num_actors * num_cpus,
        gpus=num_actors * num_gpus,
        hint="lower the encoder's actors, num_cpus or num_gpus, or add nodes",
    )
    return ds.map_batches(
        EncodeActor,
        fn_constructor_kwargs={
            "factory": factory,
            "kind": kind,
            "threads": int(num_cpus),
            "sink": sink,
        },
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=num_cpus,
        num_gpus=num_gpus or None,
    )


def collect(encoded, n: int, kind: str, width: int | None = None):
    """The rows :func:`encode_dataset` returned (no sink) as one matrix in row order:
    ``[n, width]`` float32 CSR for sparse, a float32 array for dense."""
    check_driver_cap(n, "collecting encoded vectors")
    rows: list[int] = []
    parts: list[Any] = []
    for batch in encoded.iter_batches(batch_format="numpy", batch_size=None):
        rows.extend(int(r) for r in batch["row"])
        if kind == "dense":
            parts.append(np.asarray(batch["embedding"]))
        else:
            width = int(batch["width"][0]) if width is None else width
            parts.extend(zip(batch["indices"], batch["values"], strict=True))
    if len(rows) != n:
        raise RuntimeError(f"encoded {len(rows)} of {n} texts")
    order = np.argsort(np.asarray(rows, dtype=np.int64), kind="stable")
    if kind == "dense":
        return np.concatenate(parts)[order] if parts else np.zeros((0, 0), np.float32)
    indptr = np.zeros(n + 1, dtype=np.int64)
    ordered = [parts[i] for i in order]
    np.cumsum([len(ix) for ix, _ in ordered], out=indptr[1:])
    indices = np.concatenate([np.asarray(ix, dtype=np.int32) for ix, _ in ordered] or [[]])
    values = np.concatenate([np.asarray(v, dtype=np.float32) for _, v in ordered] or [[]])
    return sp.csr_matrix(
        (values.astype(np.float32), indices.astype(np.int32), indptr), shape=(n, width or 1)
    )


def drain(encoded) -> Iterator[dict[str, Any]]:
    """The summary rows of an :class:`IndexSink` run, one per batch (decoded)."""
    for batch in encoded.iter_batches(batch_format="numpy", batch_size=None):
        for indexed, failed, stats in zip(
            batch["indexed"], batch["failed"], batch["sparsity"], strict=True
        ):
            yield {
                "indexed": int(indexed),
                "failed": json.loads(str(failed)),
                "sparsity": json.loads(str(stats)),
            }
