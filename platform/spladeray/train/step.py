"""The parts of one training step that the loop and bench/train.py share.

- :func:`load_training_encoder`: the configured model, ready to train (gradient checkpointing,
  trainable IDF);
- :class:`PairEncoder`: queries and documents through one encoder in a single (DDP) forward;
- :func:`autocast_context`: BF16 autocast by ``train.precision`` and the device;
- :func:`training_collator`: prepared rows -> tokenised tensors, with training's lengths;
- :func:`sparse_batch`: model outputs and a collated batch -> the :class:`SparseBatch` losses take.
"""

from __future__ import annotations

import contextlib
import logging
import random

import numpy as np
import torch
from torch import nn

from spladeray.train.losses import SparseBatch

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


TRAINING_EVAL_DTYPE = {"bf16": "bfloat16", "auto": "auto", "fp32": "float32"}
"""``train.precision`` -> the encoder's bulk-encoding precision, so evaluation during training
runs in the dtype the model trains in (``model.dtype`` is float32 by default: inference's)."""


def load_training_encoder(cfg):
    """The encoder ``cfg.model`` names, in train mode, with ``cfg.train``'s training options;
    its bulk encoding (evaluation during training) in the training precision."""
    from spladeray.model.loading import load_encoder

    tc = cfg.train
    encoder = load_encoder(
        cfg.model.path,
        pooling=cfg.model.pooling,
        max_query_length=cfg.model.max_query_length,
        max_document_length=cfg.model.max_document_length,
        document_stride=cfg.model.document_stride,
        doc_only=cfg.model.doc_only,
        idf_path=cfg.model.idf_path,
        trust_remote_code=cfg.model.trust_remote_code,
        dtype=TRAINING_EVAL_DTYPE.get(tc.precision, "float32"),
    )
    if tc.gradient_checkpointing:
        encoder.mlm.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    if tc.train_idf:
        if not encoder.doc_only:
            raise ValueError("train.train_idf needs a doc-only model (model.doc_only / idf.json)")
        encoder.idf_weight.requires_grad_(True)
    return encoder.train()


def find_unused_parameters(encoder: nn.Module, cfg) -> bool:
    """Whether DDP must look for parameters that get no gradient (slower, so only when needed):
    a model with its own code (``model.trust_remote_code``), whose forward spladeray cannot
    see, or one with a trainable pooler, which SPLADE's vocabulary head never uses. Without it
    DDP fails at the second step waiting for those parameters' gradients."""
    if cfg.model.trust_remote_code:
        return True
    return any(
        p.requires_grad
        for name, module in encoder.named_modules()
        if name.rsplit(".", 1)[-1] == "pooler"
        for p in module.parameters()
    )


class PairEncoder(nn.Module):
    """Queries and documents through one encoder in a single forward (one DDP call per step)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(
        self, query: dict[str, torch.Tensor], document: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.encoder.encode_tensors(query, "query")
        d = self.encoder.encode_tensors(document, "document")
        return q, d


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """``torch.bfloat16`` when the step should run under BF16 autocast, else ``None`` (fp32).

    ``bf16`` always; ``auto`` on a CUDA device that supports BF16, and fp32 with a warning on one
    that does not (pre-Ampere GPUs); ``fp32`` never.
    """
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        logger.warning(
            "train.precision auto: %s does not support bf16; training in fp32",
            torch.cuda.get_device_name(device),
        )
    return None


def autocast_context(device: torch.device, precision: str):
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def to_device(features: dict, device: torch.device) -> dict:
    """Tensors to ``device`` (``non_blocking``: asynchronous from the collator's pinned memory);
    host values (``lengths``) as they are."""
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in features.items()
    }


def training_collator(encoder, train_cfg):
    """The :class:`Collator` of training: ``train.max_*_length`` truncate training inputs only
    (evaluation keeps the model's lengths)."""
    from spladeray.train.data import Collator

    return Collator(
        tokenizer=encoder.tokenizer,
        num_negatives=train_cfg.num_negatives,
        max_query_length=train_cfg.max_query_length or encoder.max_query_length,
        max_document_length=train_cfg.max_document_length or encoder.max_document_length,
        teachers=train_cfg.teachers,
        doc_only=encoder.doc_only,
        pin_memory=bool(getattr(train_cfg, "use_gpu", False)) and torch.cuda.is_available(),
    )


def sparse_batch(
    queries: torch.Tensor, documents: torch.Tensor, batch: dict, *, encoder, train_cfg
) -> SparseBatch:
    """Split the encoded documents (positives, then ``num_negatives`` per query) for the losses;
    the teacher scores of ``train_cfg.teachers`` move to the queries' device."""
    b = queries.shape[0]
    keys = {}
    if getattr(train_cfg, "mask_in_batch_positives", False) and "document_keys" in batch:
        keys = {
            k: batch[k].to(queries.device, non_blocking=True)
            for k in ("document_keys", "query_positive_keys")
        }
    return SparseBatch(
        queries=queries,
        positives=documents[:b],
        negatives=documents[b:].view(b, train_cfg.num_negatives, -1),
        teacher={
            t: batch[f"teacher_{t}"].to(queries.device, non_blocking=True)
            for t in train_cfg.teachers
        },
        query_idf=encoder.idf_weight if encoder.doc_only else None,
        document_keys=keys.get("document_keys"),
        query_positive_keys=keys.get("query_positive_keys"),
    )
