"""Split a Hugging Face masked-LM into backbone, head transform and vocabulary decoder.

The fast SPLADE path needs the three parts apart: the backbone runs on the padded batch, the
head transform and the (large) vocabulary projection run only on real tokens, in chunks.
Architectures listed in ``_SPLITTERS`` get the fast path; for any other masked-LM
:func:`split_mlm` returns ``None`` and the encoder calls the whole model (correct, just slower
and heavier).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class MLMParts:
    """``logits = decoder(transform(backbone(input_ids, attention_mask)))``."""

    backbone: nn.Module
    transform: nn.Module
    decoder: nn.Module


class _Sequential(nn.Module):
    """A head transform made of existing sub-modules (kept by reference, not copied)."""

    def __init__(self, *parts: nn.Module) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            x = part(x)
        return x


class _RobertaTransform(nn.Module):
    """RoBERTa / XLM-R ``lm_head`` without its decoder: dense -> gelu -> layer_norm."""

    def __init__(self, lm_head: nn.Module) -> None:
        super().__init__()
        self.lm_head = lm_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lm_head.dense(x)
        x = nn.functional.gelu(x)
        return self.lm_head.layer_norm(x)


def _bert(model: nn.Module) -> MLMParts:
    head = model.cls.predictions
    return MLMParts(model.bert, head.transform, head.decoder)


def _distilbert(model: nn.Module) -> MLMParts:
    transform = _Sequential(model.vocab_transform, model.activation, model.vocab_layer_norm)
    return MLMParts(model.distilbert, transform, model.vocab_projector)


def _roberta(model: nn.Module) -> MLMParts:
    return MLMParts(model.roberta, _RobertaTransform(model.lm_head), model.lm_head.decoder)


def _modernbert(model: nn.Module) -> MLMParts:
    return MLMParts(model.model, model.head, model.decoder)


_SPLITTERS: dict[str, Callable[[nn.Module], MLMParts]] = {
    "BertForMaskedLM": _bert,
    "DistilBertForMaskedLM": _distilbert,
    "RobertaForMaskedLM": _roberta,
    "XLMRobertaForMaskedLM": _roberta,
    "CamembertForMaskedLM": _roberta,
    "ModernBertForMaskedLM": _modernbert,
}


def split_mlm(model: nn.Module) -> MLMParts | None:
    """The fast-path parts of a known masked-LM, or ``None`` for an unknown architecture."""
    splitter = _SPLITTERS.get(type(model).__name__)
    return splitter(model) if splitter else None


class LinearHead(nn.Module):
    """The legacy OpenSearch head: a plain linear projection ``hidden -> vocab``.

    Stored as ``neural_sparse_head.pt`` next to a base encoder (OpenSearch's older fine-tuning
    samples). Loaded from a state dict ``{"weight": [V, H], "bias": [V]}`` or a bare weight tensor.
    """

    def __init__(self, hidden_size: int, vocab_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)
