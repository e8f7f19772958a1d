"""Teacher scores for distillation, and their ensemble.

Three teacher kinds, each scoring aligned ``(query, passage)`` pairs:

- ``dense``: a sentence-transformers bi-encoder; ``s = sim(E_q(query), E_d(passage))`` with the
  model's own similarity function (cosine for all-MiniLM-L6-v2).
- ``cross``: a sentence-transformers ``CrossEncoder``; ``s`` = its raw logit (no sigmoid).
- ``sparse``: a :class:`~spladeray.model.SpladeEncoder`; ``s = q . d`` of the SPLADE vectors.

The ensemble (OpenSearch inference-free paper, arXiv 2411.04403): for one row, i.e. one query and
its candidates ``c_1..c_n = [positive, *negatives]``, and enabled teachers ``t`` with weights
``w_t``::

    s'_t(c) = (s_t(c) - min_c' s_t(c')) / (max_c' s_t(c') - min_c' s_t(c'))   (1 when max = min, as OpenSearch's min_max)
    s_ens(c) = scale * sum_t w_t * s'_t(c) / sum_t w_t

so every teacher contributes on the same [0, 1] scale per query, and ``scale`` sets the range the
student's distillation loss sees.

Speed (docs/prepare.md, "Teacher throughput"): a teacher actor runs ``floor(num_cpus)`` torch
threads (at least 1); ``dtype: auto`` runs the dense and cross-encoder forward under bfloat16
autocast on a CPU with native bf16 (about 2x, cosine within ~2e-3 of float32); and each teacher
keeps the encodings of the last :data:`DOC_CACHE_SIZE` documents it scored, since hard negatives
recur across the rows of a run (a document is encoded once per actor, not once per row).

``device: auto`` means CUDA only when the process may use a GPU: inside a Ray actor, that the
actor holds one (:func:`spladeray.raycluster.resolve_device`); a CPU-only actor on a GPU node
stays on CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from spladeray.config import TeacherConfig
from spladeray.data.schema import ENSEMBLE, SCORE_TYPE, score_column
from spladeray.retrieval.fusion import minmax


class TeacherLoadError(RuntimeError):
    """A configured teacher could not be loaded; the message names the teacher."""


def resolve_model_path(ref: str) -> str:
    """``pkg:<package>/<subdir>`` -> the folder inside that installed package; others unchanged."""
    if not ref.startswith("pkg:"):
        return ref
    package, _, sub = ref[4:].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"python package {package!r} is not installed (model {ref!r})")
    return str(Path(next(iter(spec.submodule_search_locations))) / sub)


def _device(device: str) -> str:
    from spladeray.raycluster import resolve_device

    return str(resolve_device(device))


DOC_CACHE_SIZE = 50_000
"""Documents whose encodings a teacher keeps (LRU): ~75 MB for a 384-d dense model."""


def _unique(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    index: dict[str, int] = {}
    positions = np.array([index.setdefault(t, len(index)) for t in texts], dtype=np.int64)
    return list(index), positions


class EncodingCache:
    """LRU map from a document's text (its 16-byte BLAKE2b digest) to its encoding.

    :meth:`encode` returns one encoding per text, calling ``encode_missing`` once with only the
    texts not seen in the last ``capacity`` lookups; ``stack`` joins per-text encodings (rows of
    an array or of a sparse matrix) in order.
    """

    def __init__(self, capacity: int = DOC_CACHE_SIZE) -> None:
        self.capacity = capacity
        self._items: OrderedDict[bytes, object] = OrderedDict()
        self.hits = self.misses = 0

    def encode(self, texts: Sequence[str], encode_missing: Callable, stack: Callable):
        keys = [hashlib.blake2b(t.encode(), digest_size=16).digest() for t in texts]
        found = {k: self._items[k] for k in keys if k in self._items}
        missing = [i for i, k in enumerate(keys) if k not in found]
        if missing:
            new = encode_missing([texts[i] for i in missing])
            for j, i in enumerate(missing):
                found[keys[i]] = new[j]
        self.hits, self.misses = self.hits + len(keys) - len(missing), self.misses + len(missing)
        for k in keys:
            self._items[k] = found[k]
            self._items.move_to_end(k)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return stack([found[k] for k in keys])


def _autocast(dtype: str, device: str):
    """bfloat16 autocast on CPU for ``dtype: bfloat16``, or ``auto`` on a CPU with native bf16
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported``: AVX512-BF16 or AMX); else nothing."""
    import torch

    if str(device) != "cpu" or dtype == "float32":
        return contextlib.nullcontext()
    if dtype == "auto" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16)


class DenseTeacher:
    """Bi-encoder scores; each distinct document is encoded once per teacher (cached)."""

    def __init__(
        self, path: str, *, batch_size: int = 64, max_length=None, device="auto", dtype="auto"
    ):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(
            resolve_model_path(path), device=_device(device), local_files_only=True
        )
        if max_length:
            self.model.max_seq_length = max_length
        self.batch_size, self.dtype = batch_size, dtype
        self.cache = EncodingCache()

    def encode(self, texts: Sequence[str], kind: str, normalize: bool = False) -> np.ndarray:
        encode = self.model.encode_query if kind == "query" else self.model.encode_document
        with _autocast(self.dtype, self.model.device):
            out = encode(
                list(texts),
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=normalize,
                show_progress_bar=False,
            )
        return out.astype(np.float32, copy=False)

    def score(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        uq, qi = _unique(queries)
        ud, di = _unique(docs)
        eq = self.encode(uq, "query")
        ed = self.cache.encode(ud, lambda texts: self.encode(texts, "document"), np.stack)
        sims = self.model.similarity_pairwise(eq[qi], ed[di])
        return np.asarray(sims, dtype=np.float32)


class CrossTeacher:
    """Cross-encoder logits for each ``(query, passage)`` pair."""

    def __init__(
        self, path: str, *, batch_size: int = 64, max_length=None, device="auto", dtype="auto"
    ):
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(
            resolve_model_path(path),
            device=_device(device),
            max_length=max_length,
            local_files_only=True,
        )
        self.batch_size, self.dtype = batch_size, dtype

    def score(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        import torch

        with _autocast(self.dtype, self.model.device):
            scores = self.model.predict(
                list(zip(queries, docs, strict=True)),
                batch_size=self.batch_size,
                activation_fn=torch.nn.Identity(),
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(scores, dtype=np.float32).reshape(len(queries))


class SparseTeacher:
    """SPLADE dot products; each distinct document is encoded once per teacher (cached).

    ``dtype`` is accepted for a uniform signature; the encoder's own precision applies.
    """

    def __init__(
        self, path: str, *, batch_size: int = 64, max_length=None, device="auto", dtype="auto"
    ):
        from spladeray.model import load_encoder

        kwargs = {"max_document_length": max_length} if max_length else {}
        self.encoder = load_encoder(
            resolve_model_path(path), batch_size=batch_size, device=_device(device), **kwargs
        )
        self.cache = EncodingCache()

    def encode(self, texts: Sequence[str], kind: str):
        return self.encoder.encode_csr(list(texts), "query" if kind == "query" else "document")

    def score(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        import scipy.sparse as sp

        uq, qi = _unique(queries)
        ud, di = _unique(docs)
        q = self.encode(uq, "query")

        def rows(texts):  # one 1 x vocab matrix per text
            m = self.encode(texts, "document")
            return [m[i : i + 1] for i in range(m.shape[0])]

        d = self.cache.encode(ud, rows, lambda r: sp.vstack(r, format="csr"))
        return np.asarray(q[qi].multiply(d[di]).sum(axis=1), dtype=np.float32).reshape(-1)


KINDS = {"dense": DenseTeacher, "cross": CrossTeacher, "sparse": SparseTeacher}


def load_teacher(name: str, cfg: TeacherConfig):
    """Build the teacher ``cfg`` describes; any failure is a :class:`TeacherLoadError`."""
    try:
        return KINDS[cfg.kind](
            cfg.path,
            batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            device=cfg.device,
            dtype=cfg.dtype,
        )
    except Exception as exc:
        raise TeacherLoadError(
            f"teacher {name!r} ({cfg.kind} model {cfg.path!r}) failed to load: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def score_rows(teacher, queries: Sequence[str], candidates: Sequence[Sequence[str]]):
    """One float32 array per row: the teacher's score of each candidate with the row's query."""
    flat_q = [q for q, cands in zip(queries, candidates, strict=True) for _ in cands]
    flat_d = [c for cands in candidates for c in cands]
    scores = teacher.score(flat_q, flat_d) if flat_d else np.zeros(0, np.float32)
    bounds = np.cumsum([0] + [len(c) for c in candidates])
    return [scores[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class TeacherScorer:
    """Ray Data actor: appends ``score_<name>`` for ``[positive, *negatives]`` of each row."""

    def __init__(self, name: str, cfg: TeacherConfig, stats=None):
        import torch

        # Ray sets OMP_NUM_THREADS from num_cpus only when it is unset; say it explicitly, so
        # that a fractional reservation (the demo's 0.5) runs 1 thread and 4 CPUs run 4.
        torch.set_num_threads(max(1, math.floor(cfg.num_cpus)))
        self.column, self.stats = score_column(name), stats
        self.teacher = load_teacher(name, cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        start = time.perf_counter()
        positives = batch.column("positive").to_pylist()
        negatives = batch.column("negatives").to_pylist()
        candidates = [[p, *n] for p, n in zip(positives, negatives, strict=True)]
        scores = score_rows(self.teacher, batch.column("query").to_pylist(), candidates)
        out = batch.append_column(self.column, pa.array(scores, SCORE_TYPE))
        if self.stats is not None:
            from spladeray.data.stats import report

            report(self.stats, self.column, batch.num_rows, time.perf_counter() - start)
        return out


# ---------------------------------------------------------------------------- ensemble
def ensemble(scores: Mapping[str, Sequence[float]], weights: Mapping[str, float], scale: float):
    """The ensemble of one row (module docstring): weighted mean of min-max scores, times scale."""
    total = sum(weights[name] for name in scores)
    if total <= 0:
        raise ValueError("the ensemble needs at least one teacher with a positive weight")
    mixed = sum(weights[name] * minmax(s) for name, s in scores.items())
    return (scale * mixed / total).astype(np.float32)


def add_ensemble(batch: pa.Table, weights: Mapping[str, float], scale: float) -> pa.Table:
    """Ray Data task: appends ``score_ensemble`` computed from the ``score_<name>`` columns."""
    columns = {name: batch.column(score_column(name)).to_pylist() for name in weights}
    rows = [
        ensemble({name: col[i] for name, col in columns.items()}, weights, scale)
        for i in range(batch.num_rows)
    ]
    return batch.append_column(score_column(ENSEMBLE), pa.array(rows, SCORE_TYPE))


def auto_teacher_gpus(teachers: Mapping[str, TeacherConfig], cluster_gpus: float) -> dict:
    """GPUs each actor of each model teacher reserves, so that ``device: auto`` teachers share
    the cluster's GPUs instead of each asking for a whole one.

    ``cpu`` teachers reserve none and ``cuda`` (or ``cuda:N``) ones their ``num_gpus`` (a GPU the cluster lacks
    is then the capacity check's clear error). ``auto`` teachers reserve nothing on a cluster
    without GPUs; otherwise their ``num_gpus``, scaled down when all ``auto`` actors together
    would ask for more than the GPUs left after the ``cuda`` teachers: each then takes
    ``left / auto actors`` (a fraction: Ray places several on one GPU, e.g. the demo's three
    teachers on a 1-GPU machine at 1/3 each, where whole GPUs would be refused).
    """
    gpus = {n: (t.num_gpus if t.device.startswith("cuda") else 0.0) for n, t in teachers.items()}
    auto = {n: t for n, t in teachers.items() if t.device == "auto" and t.num_gpus > 0}
    if cluster_gpus <= 0 or not auto:
        return gpus
    left = max(0.0, cluster_gpus - sum(t.actors * gpus[n] for n, t in teachers.items()))
    wanted = sum(t.actors * t.num_gpus for t in auto.values())
    if left <= 0:
        return gpus  # auto teachers run on CPU: nothing is left for them
    scale = min(1.0, left / wanted)
    for name, t in auto.items():
        gpus[name] = t.num_gpus * scale
    return gpus
