"""``SpladeEncoder``: SPLADE over any Hugging Face masked-LM, with an inference-free query side.

Document (and, unless doc-only, query) vectors::

    w_j = pool_i  log(1 + relu(logit_ij))      pool = max (SPLADE v2+) or sum (SPLADE v1)

over the unmasked tokens ``i`` of the text, ``logit_ij`` the masked-LM's score of vocabulary entry
``j`` at position ``i``. In doc-only (inference-free) mode a query is only tokenized and each
distinct token ``t`` gets ``idf[t]`` (OpenSearch ``doc-v2/v3-distill`` style).

Special tokens (``[CLS]``, ``[SEP]``, ``[PAD]``, ... : ``tokenizer.all_special_ids``) always get
weight 0: they are not terms, and every export (TorchScript, ONNX) zeroes them the same way.

Bulk encoding runs in the precision of ``precision`` (``float32`` | ``bfloat16`` | ``float16`` |
``auto``, see :mod:`spladeray.model.precision`); ``forward`` is fp32 unless asked otherwise.

Loading and saving live in :mod:`spladeray.model.loading` and :mod:`spladeray.model.saving`; this
module is the computation.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from tqdm.auto import tqdm

from spladeray.model.chunking import check_stride, document_windows, pool_documents
from spladeray.model.heads import LinearHead, split_mlm
from spladeray.model.idf import idf_to_tensor, tensor_to_idf
from spladeray.model.pooling import Activation, Pooling, pool_full_logits, pool_logits
from spladeray.model.precision import FP32, Plan, Precision, normalize, plan
from spladeray.model.sparse import csr_to_dicts, dense_to_csr, prune, top_tokens

logger = logging.getLogger(__name__)

TOKENIZE_CHUNK = 8192
"""Texts :meth:`SpladeEncoder.encode_csr` tokenizes and length-sorts at once: bounds the token
ids held (a corpus is never tokenized in one call) while batches stay well length-sorted."""

Kind = Literal["document", "query"]


class RandomHeadError(RuntimeError):
    """Raised when a model whose projection head was randomly initialised is indexed or served."""


class SpladeEncoder(nn.Module):
    """A learned sparse encoder. See the module docstring for the formula.

    Args:
        mlm: a ``*ForMaskedLM`` model, or a base encoder (``AutoModel``) when ``head`` is given.
        tokenizer: its tokenizer.
        head: the legacy linear projection ``hidden -> vocab`` (``neural_sparse_head.pt``).
        pooling: ``max`` (default) or ``sum``.
        activation: ``relu`` (``log(1+relu)``) or ``log1p_relu`` (``log(1+log(1+relu))``).
        max_query_length / max_document_length: truncation, in tokens (special tokens included).
        document_stride: None truncates documents at ``max_document_length``; an int encodes
            every window of ``max_document_length`` tokens, consecutive windows sharing
            ``document_stride`` tokens, and max-pools them (:mod:`spladeray.model.chunking`).
        top_k / threshold: optional pruning of output weights.
        idf: token -> weight table; required when ``doc_only``.
        doc_only: encode queries with ``idf`` instead of the model.
        precision: what bulk encoding runs in (:mod:`spladeray.model.precision`); ``float32``
            by default here, ``auto`` by default in configs.
        metadata: provenance, e.g. ``random_head`` (see :attr:`random_head`).
    """

    progress: Callable[[str, int, int], None] | None = None
    """Called as ``progress(kind, done, total)`` after each batch :meth:`encode_csr` encodes
    (rank 0's validation posts it to the driver's console); ``None``: nothing is called."""

    def __init__(
        self,
        mlm: nn.Module,
        tokenizer: Any,
        *,
        head: LinearHead | None = None,
        pooling: Pooling = "max",
        activation: Activation = "relu",
        max_query_length: int = 64,
        max_document_length: int = 256,
        document_stride: int | None = None,
        top_k: int | None = None,
        threshold: float = 0.0,
        idf: dict[str, float] | None = None,
        doc_only: bool = False,
        batch_size: int = 32,
        chunk_tokens: int = 512,
        precision: Precision | str | torch.dtype | None = "float32",
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if pooling not in ("max", "sum"):
            raise ValueError(f"pooling must be 'max' or 'sum', got {pooling!r}")
        if activation not in ("relu", "log1p_relu"):
            raise ValueError(f"activation must be 'relu' or 'log1p_relu', got {activation!r}")
        if doc_only and idf is None:
            raise ValueError("doc_only=True needs an idf table (idf.json)")
        if document_stride is not None:
            if pooling != "max":
                raise ValueError(
                    "document_stride (chunked documents) needs pooling='max': max-pooling the "
                    "windows is exact only for SPLADE-max"
                )
            check_stride(tokenizer, max_document_length, document_stride)
        self.mlm = mlm
        self.head = head
        self.tokenizer = tokenizer
        self.pooling: Pooling = pooling
        self.activation: Activation = activation
        self.max_query_length = max_query_length
        self.max_document_length = max_document_length
        self.document_stride = document_stride
        self.top_k = top_k
        self.threshold = threshold
        self.doc_only = doc_only
        self.batch_size = batch_size
        self.chunk_tokens = chunk_tokens
        self.precision: Precision = normalize(precision)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.vocab_size = len(tokenizer)
        weight = idf_to_tensor(idf, tokenizer) if idf is not None else torch.zeros(0)
        # A parameter so that training can make the query IDF table trainable (off by default).
        self.idf_weight = nn.Parameter(weight, requires_grad=False)
        self._parts = None if head is not None else split_mlm(mlm)
        self._id_to_token: list[str] | None = None
        special = sorted({i for i in tokenizer.all_special_ids if 0 <= i < self.vocab_size})
        self.register_buffer(
            "special_ids", torch.tensor(special, dtype=torch.long), persistent=False
        )

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.mlm.parameters()).device

    @property
    def random_head(self) -> bool:
        """True when the vocabulary projection was randomly initialised at load time."""
        return bool(self.metadata.get("random_head", False))

    @property
    def has_idf(self) -> bool:
        return self.idf_weight.numel() > 0

    @property
    def id_to_token(self) -> list[str]:
        if self._id_to_token is None:
            self._id_to_token = self.tokenizer.convert_ids_to_tokens(list(range(self.vocab_size)))
        return self._id_to_token

    def idf_table(self) -> dict[str, float] | None:
        """The current query IDF table (it may have been trained), or None."""
        return tensor_to_idf(self.idf_weight, self.tokenizer) if self.has_idf else None

    def check_servable(self, allow_random_head: bool = False) -> None:
        """Refuse to index or serve a model with a random projection head unless allowed."""
        if self.random_head and not allow_random_head:
            raise RandomHeadError(
                "this model's vocabulary projection head was randomly initialised "
                f"({self.metadata.get('random_head_reason', 'missing head weights')}); its "
                "vectors are noise. Train it first, or set model.allow_random_head: true to "
                "index/serve it anyway."
            )

    # ------------------------------------------------------------------ tensors
    def tokenize(self, texts: Sequence[str], kind: Kind = "document") -> dict[str, torch.Tensor]:
        """Padded ``input_ids`` / ``attention_mask`` for training or custom loops.

        Doc-only queries are tokenized without special tokens (they carry no IDF weight).
        """
        max_length = self.max_query_length if kind == "query" else self.max_document_length
        return dict(
            self.tokenizer(
                list(texts),
                padding=True,
                truncation=True,
                max_length=max_length,
                add_special_tokens=not (kind == "query" and self.doc_only),
                return_tensors="pt",
            )
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        plan: Plan = FP32,
        *,
        lengths: list[int] | None = None,
        token_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Dense ``[batch, vocab]`` SPLADE weights through the model (differentiable), special
        tokens zeroed. ``plan`` (inference) picks reduced precision; the output is fp32 then.
        ``lengths`` / ``token_index`` (the collator's, from the host mask) spare the pooling
        its reads of the mask back from the device."""
        cast = (  # the backbone (and head transform) under autocast where the plan says so
            torch.autocast(input_ids.device.type, dtype=plan.backbone)
            if plan.backbone is not None
            else contextlib.nullcontext()
        )
        with cast:
            weights = self._pooled(
                input_ids, attention_mask, plan, lengths=lengths, token_index=token_index
            )
        if self.special_ids.numel():
            weights = weights.index_fill(1, self.special_ids.to(weights.device), 0.0)
        return weights

    def _pooled(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        plan: Plan,
        *,
        lengths: list[int] | None = None,
        token_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        projection = plan.projection if not torch.is_grad_enabled() else None
        if self.head is not None:
            hidden = self.mlm(input_ids=input_ids, attention_mask=attention_mask)[0]
            return pool_logits(
                hidden,
                attention_mask,
                nn.Identity(),
                self.head,
                pooling=self.pooling,
                activation=self.activation,
                chunk_tokens=self.chunk_tokens,
                compute_dtype=projection,
                lengths=lengths,
                token_index=token_index,
            )
        if self._parts is not None:
            hidden = self._parts.backbone(input_ids=input_ids, attention_mask=attention_mask)[0]
            return pool_logits(
                hidden,
                attention_mask,
                self._parts.transform,
                self._parts.decoder,
                pooling=self.pooling,
                activation=self.activation,
                chunk_tokens=self.chunk_tokens,
                compute_dtype=projection,
                lengths=lengths,
                token_index=token_index,
            )
        cast = (
            torch.autocast(input_ids.device.type, dtype=plan.projection)
            if plan.projection is not None and plan.backbone is None
            else contextlib.nullcontext()
        )
        with cast:
            logits = self.mlm(input_ids=input_ids, attention_mask=attention_mask).logits
        return pool_full_logits(
            logits.float(), attention_mask, pooling=self.pooling, activation=self.activation
        )

    def idf_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Doc-only query vectors ``q_t = idf[t]`` for each distinct unmasked token (differentiable in idf)."""
        presence = torch.zeros(
            input_ids.shape[0],
            self.vocab_size,
            device=input_ids.device,
            dtype=self.idf_weight.dtype,
        )
        presence.scatter_(1, input_ids, attention_mask.to(presence.dtype))
        return presence.clamp_(max=1.0) * self.idf_weight.to(input_ids.device)

    def encode_tensors(self, features: dict[str, torch.Tensor], kind: Kind) -> torch.Tensor:
        """``forward`` or ``idf_forward`` by kind; the single entry point training uses."""
        if kind == "query" and self.doc_only:
            return self.idf_forward(features["input_ids"], features["attention_mask"])
        return self(
            features["input_ids"],
            features["attention_mask"],
            lengths=features.get("lengths"),
            token_index=features.get("token_index"),
        )

    # ------------------------------------------------------------------ bulk encoding
    def precision_plan(self) -> Plan:
        """What :meth:`encode_csr` runs in on the current device (``self.precision`` resolved)."""
        return plan(self.precision, self.device)

    @torch.inference_mode()
    def encode_csr(
        self,
        texts: Sequence[str],
        kind: Kind = "document",
        *,
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> sp.csr_matrix:
        """Encode texts to a ``[n, vocab]`` float32 CSR matrix, in input order.

        Texts are tokenized without padding, :data:`TOKENIZE_CHUNK` at a time (so the token ids
        of a whole corpus are never held at once), sorted by length within the chunk and
        batched, so a batch is padded only to its own longest text; see :mod:`spladeray.model.pooling` for the rest.
        With ``document_stride`` set, documents are windows max-pooled per document
        (:mod:`spladeray.model.chunking`).
        """
        texts = _check_texts(texts)
        if not texts:
            return sp.csr_matrix((0, self.vocab_size), dtype=np.float32)
        if kind not in ("document", "query"):
            raise ValueError(f"kind must be 'document' or 'query', got {kind!r}")
        if kind == "query" and self.doc_only:
            return self._encode_idf_csr(texts)
        if len(texts) > TOKENIZE_CHUNK:  # tokenized and length-sorted a chunk at a time
            bar = tqdm(total=len(texts), desc=f"encode {kind}s", disable=not show_progress)
            parts, hook = [], self.progress
            try:
                with bar:
                    for start in range(0, len(texts), TOKENIZE_CHUNK):
                        chunk = texts[start : start + TOKENIZE_CHUNK]
                        if hook is not None:  # the chunk's counts as counts of the whole call
                            self.progress = lambda k, done, _, s=start: hook(
                                k, s + done, len(texts)
                            )
                        parts.append(self.encode_csr(chunk, kind, batch_size=batch_size))
                        bar.update(len(chunk))
            finally:
                self.progress = hook
            return sp.vstack(parts, format="csr")
        max_length = self.max_query_length if kind == "query" else self.max_document_length
        chunked = kind == "document" and self.document_stride is not None
        if chunked:
            ids, owner = document_windows(self.tokenizer, texts, max_length, self.document_stride)
        else:
            ids = self.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        order = np.argsort([-len(x) for x in ids], kind="stable")
        bs = batch_size or self.batch_size
        pad_id = self.tokenizer.pad_token_id or 0
        was_training = self.training
        self.eval()
        run_plan = self.precision_plan()
        blocks: list[tuple[np.ndarray, sp.csr_matrix]] = []
        device = self.device
        with tqdm(
            total=len(ids), desc=f"encode {kind}s", disable=None if show_progress else True
        ) as bar:  # None: off a terminal
            for start in range(0, len(order), bs):
                batch_idx = order[start : start + bs]
                rows = [ids[i] for i in batch_idx]
                width = max(len(r) for r in rows)
                input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, row in enumerate(rows):
                    input_ids[r, : len(row)] = torch.tensor(row)
                    mask[r, : len(row)] = 1
                weights = self(input_ids.to(device), mask.to(device), run_plan).float()
                if not chunked:  # windows are pruned after pooling
                    weights = prune(weights, self.top_k, self.threshold)
                blocks.append((batch_idx, dense_to_csr(weights)))
                bar.update(len(rows))
                if self.progress is not None:
                    self.progress(kind, start + len(rows), len(order))
        self.train(was_training)
        stacked = sp.vstack([b for _, b in blocks], format="csr")
        inverse = np.empty(len(order), dtype=np.int64)
        inverse[np.concatenate([i for i, _ in blocks])] = np.arange(len(order))
        if chunked:
            return pool_documents(stacked[inverse], owner, len(texts), self.top_k, self.threshold)
        return stacked[inverse]

    def _encode_idf_csr(self, texts: list[str]) -> sp.csr_matrix:
        enc = self.tokenizer(
            texts, truncation=True, max_length=self.max_query_length, add_special_tokens=False
        )["input_ids"]
        weight = self.idf_weight.detach().float().cpu().numpy()
        indptr, indices, data = [0], [], []
        for row in enc:
            uniq = np.unique(np.asarray(row, dtype=np.int64))
            w = weight[uniq] if uniq.size else np.zeros(0, dtype=np.float32)
            keep = w > self.threshold
            uniq, w = uniq[keep], w[keep]
            if self.top_k is not None and w.size > self.top_k:
                top = np.argsort(-w, kind="stable")[: self.top_k]
                top.sort()
                uniq, w = uniq[top], w[top]
            indices.append(uniq.astype(np.int32))
            data.append(w.astype(np.float32))
            indptr.append(indptr[-1] + uniq.size)
        return sp.csr_matrix(
            (np.concatenate(data), np.concatenate(indices), np.asarray(indptr)),
            shape=(len(texts), self.vocab_size),
        )

    def encode_documents_csr(self, texts: Sequence[str], **kwargs: Any) -> sp.csr_matrix:
        return self.encode_csr(texts, "document", **kwargs)

    def encode_queries_csr(self, texts: Sequence[str], **kwargs: Any) -> sp.csr_matrix:
        return self.encode_csr(texts, "query", **kwargs)

    def encode_documents(self, texts: Sequence[str], **kwargs: Any) -> list[dict[str, float]]:
        """``[{token: weight}, ...]`` for documents, zeros dropped."""
        return self.to_dicts(self.encode_csr(texts, "document", **kwargs))

    def encode_queries(self, texts: Sequence[str], **kwargs: Any) -> list[dict[str, float]]:
        """``[{token: weight}, ...]`` for queries (IDF lookups in doc-only mode)."""
        return self.to_dicts(self.encode_csr(texts, "query", **kwargs))

    def to_dicts(self, matrix: sp.csr_matrix) -> list[dict[str, float]]:
        return csr_to_dicts(matrix, self.id_to_token)

    def decode(self, vector: dict[str, float], k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` heaviest tokens of a vector, for people."""
        return top_tokens(vector, k)

    # ------------------------------------------------------------------ io
    @classmethod
    def from_pretrained(cls, path_or_hub_id: str, **overrides: Any) -> SpladeEncoder:
        """Load any supported layout; see :func:`spladeray.model.loading.load_encoder`."""
        from spladeray.model.loading import load_encoder

        return load_encoder(path_or_hub_id, **overrides)

    def save_pretrained(self, directory: str) -> None:
        """Write a directory for ``SparseEncoder``, ``AutoModelForMaskedLM`` and us."""
        from spladeray.model.saving import save_encoder

        save_encoder(self, directory)

    def config_dict(self) -> dict[str, Any]:
        """Our settings, as written to ``spladeray.json``."""
        return {
            "pooling": self.pooling,
            "activation": self.activation,
            "max_query_length": self.max_query_length,
            "max_document_length": self.max_document_length,
            "document_stride": self.document_stride,
            "top_k": self.top_k,
            "threshold": self.threshold,
            "doc_only": self.doc_only,
        }


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("expected a list of texts, got a single string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"text {i} is {type(t).__name__}, not str")
    return out
