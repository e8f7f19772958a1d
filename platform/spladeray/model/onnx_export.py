"""Export a :class:`SpladeEncoder` to one ONNX graph, and run it with ONNX Runtime.

The graph takes ``input_ids`` and ``attention_mask`` (int64, ``[batch, seq]``, both axes
dynamic) and returns ``output``: the pooled ``[batch, vocab]`` SPLADE vector with everything
inside -- masked LM, ``log1p(relu)`` activation, max (or sum) pooling over unmasked tokens,
special tokens zeroed, and the model's pruning (``top_k`` / ``threshold``). It is the same
computation as the TorchScript export (:class:`spladeray.model.export.TorchScriptSplade`), so
every artifact produces the vectors :meth:`SpladeEncoder.encode_documents` produces; the export
checks that on onnxruntime with batches of other shapes than the exported one and refuses a
model that differs by more than ``tolerance``.

Exporters elsewhere often get this wrong: they export the bare masked LM (``[batch, seq,
vocab]`` logits, leaving pooling to the caller) or keep weights on ``[CLS]`` / ``[SEP]``.

The doc-only query side needs no graph at all (``tokenizer.json`` + ``idf.json``); see
:func:`spladeray.model.export.export_ml_commons`.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spladeray.model.encoder import SpladeEncoder
from spladeray.model.sparse import prune

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
OPSET = 18


class _OnnxSplade(nn.Module):
    """``(input_ids, attention_mask) -> [batch, vocab]``: TorchScriptSplade with plain tensor
    inputs (ONNX graphs name their inputs; ML Commons' ONNX runtime feeds them by name)."""

    def __init__(self, encoder: SpladeEncoder, apply_pruning: bool) -> None:
        super().__init__()
        from spladeray.model.export import TorchScriptSplade

        self.inner = TorchScriptSplade(encoder, apply_pruning=apply_pruning)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.inner.vectors(input_ids, attention_mask)


def export_onnx(
    encoder: SpladeEncoder,
    path: str | os.PathLike[str],
    *,
    apply_pruning: bool = True,
    example_texts: list[str] | None = None,
    check_texts: list[str] | None = None,
    tolerance: float = 1e-4,
) -> float:
    """Write the encoder as one ONNX graph to ``path`` (fp32, CPU) and check it on onnxruntime.

    Returns the max absolute difference to the encoder on ``check_texts`` (several batch
    shapes); above ``tolerance`` it is an ``ExportError`` and the file is removed.
    """
    from spladeray.model.export import _CHECK_TEXTS, ExportError

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    device = encoder.device
    dtype = next(encoder.parameters()).dtype
    was_training = encoder.training
    encoder.cpu().float().eval()
    try:
        module = _OnnxSplade(encoder, apply_pruning).eval()
        features = encoder.tokenize(example_texts or _CHECK_TEXTS, "document")
        example = (features["input_ids"], features["attention_mask"])
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                example,
                str(out),
                input_names=["input_ids", "attention_mask"],
                output_names=["output"],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "sequence"},
                    "attention_mask": {0: "batch", 1: "sequence"},
                    "output": {0: "batch"},
                },
                opset_version=OPSET,
                dynamo=False,
            )
        diff = compare_onnx(out, encoder, check_texts or _CHECK_TEXTS, pruned=apply_pruning)
        if diff > tolerance:
            out.unlink(missing_ok=True)
            raise ExportError(
                f"the ONNX model differs from the encoder by {diff:.3g} (tolerance "
                f"{tolerance:g}); refusing to write a model that would index different vectors"
            )
    finally:
        encoder.to(device=device, dtype=dtype)
        encoder.train(was_training)
    logger.info("exported %s; max |onnxruntime - encoder| = %.2e", out, diff)
    return diff


def onnx_session(path: str | os.PathLike[str], *, threads: int | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on CPU (``threads``: intra-op threads, default ORT's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
    """``[batch, vocab]`` weights from an ONNX session for a padded batch."""
    feeds = {
        "input_ids": input_ids.cpu().numpy().astype(np.int64),
        "attention_mask": attention_mask.cpu().numpy().astype(np.int64),
    }
    return session.run(["output"], feeds)[0]


def compare_onnx(
    path: str | os.PathLike[str], encoder: SpladeEncoder, texts: list[str], *, pruned: bool = True
) -> float:
    """Max absolute difference of the ONNX graph (on onnxruntime) and the encoder's fp32 weights,
    over batches of several shapes (all texts, the first one alone, reversed)."""
    session = onnx_session(path)
    worst = 0.0
    for batch in (texts, texts[:1], list(reversed(texts))):
        features = encoder.tokenize(batch, "document")
        got = run_onnx(session, features["input_ids"], features["attention_mask"])
        with torch.no_grad():
            ref = encoder(features["input_ids"], features["attention_mask"]).float()
            if pruned:
                ref = prune(ref, encoder.top_k, encoder.threshold)
        if got.shape != tuple(ref.shape):
            raise ValueError(f"ONNX output shape {got.shape} != {tuple(ref.shape)}")
        worst = max(worst, float(np.abs(got - ref.numpy()).max()))
    return worst


__all__ = ["ONNX_FILE", "compare_onnx", "export_onnx", "onnx_session", "run_onnx"]
