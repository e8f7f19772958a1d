"""Long documents: encode overlapping windows of ``max_document_length`` tokens and max-pool them.

A SPLADE-max document vector is ``w_j = max_i f(logit_ij)`` over the document's tokens. Cut the
token sequence into windows ``W_1..W_m`` (each wrapped in the model's special tokens, as a
document of its own), encode each window and take the element-wise maximum::

    w_j = max_k max_{i in W_k} f(logit_ij)

This is exact SPLADE-max over the windows: every token is seen by the model with at most
``max_document_length`` positions of context, and no token after the first window is dropped,
as it is with truncation. Pruning (``top_k`` / ``threshold``) is applied to the pooled vector,
never per window. Sum pooling (SPLADE v1) has no such identity, so chunking refuses it.

Windows come from the tokenizer itself (Hugging Face ``return_overflowing_tokens`` with
``stride``), so they are cut exactly where the tokenizer would cut and special tokens are added
the tokenizer's way. ``stride`` is the Hugging Face meaning: the number of tokens that
consecutive windows share (0: windows touch, no overlap).

:meth:`spladeray.model.SpladeEncoder.encode_csr` is the one caller (``model.document_stride``),
so the encoder, the indexing jobs, Serve ``/index`` and evaluation all chunk the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from spladeray.model.sparse import dense_to_csr, prune


def check_stride(tokenizer: Any, max_length: int, stride: int) -> None:
    """A window of ``max_length`` tokens must hold more content tokens than it shares."""
    content = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    if stride < 0 or stride >= content:
        raise ValueError(
            f"model.document_stride={stride} must be >= 0 and smaller than the "
            f"{content} content tokens of a {max_length}-token window (max_document_length "
            "minus the special tokens)"
        )


def document_windows(
    tokenizer: Any, texts: Sequence[str], max_length: int, stride: int
) -> tuple[list[list[int]], np.ndarray]:
    """The token-id windows of every text (special tokens included) and, per window, the index
    of the text it belongs to. A text that fits gives one window, identical to truncation."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            "chunked document encoding (model.document_stride) needs a fast (Rust) tokenizer; "
            f"{type(tokenizer).__name__} is not one"
        )
    check_stride(tokenizer, max_length, stride)
    enc = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
    )
    return list(enc["input_ids"]), np.asarray(enc["overflow_to_sample_mapping"], dtype=np.int64)


def max_pool_windows(windows: sp.csr_matrix, owner: np.ndarray, n_texts: int) -> sp.csr_matrix:
    """Row ``t`` of the result is the element-wise max of the rows of ``windows`` whose
    ``owner`` is ``t`` (weights are >= 0 and zeros are not stored, so a missing entry is 0)."""
    coo = windows.tocoo()
    rows = owner[coo.row]
    keys = rows * windows.shape[1] + coo.col.astype(np.int64)
    uniq, inverse = np.unique(keys, return_inverse=True)
    data = np.zeros(uniq.size, dtype=np.float32)
    np.maximum.at(data, inverse, coo.data.astype(np.float32))
    pooled = sp.csr_matrix(
        (data, ((uniq // windows.shape[1]), (uniq % windows.shape[1]))),
        shape=(n_texts, windows.shape[1]),
    )
    pooled.sort_indices()
    return pooled


def prune_csr(
    matrix: sp.csr_matrix, top_k: int | None, threshold: float, block: int = 256
) -> sp.csr_matrix:
    """:func:`spladeray.model.sparse.prune` on a CSR matrix (a block of rows at a time)."""
    if top_k is None and threshold <= 0:
        return matrix
    blocks = [
        dense_to_csr(prune(torch.from_numpy(matrix[i : i + block].toarray()), top_k, threshold))
        for i in range(0, matrix.shape[0], block)
    ]
    return sp.vstack(blocks, format="csr")


def pool_documents(
    windows: sp.csr_matrix,
    owner: np.ndarray,
    n_texts: int,
    top_k: int | None = None,
    threshold: float = 0.0,
) -> sp.csr_matrix:
    """Unpruned window vectors -> pruned document vectors (max-pool first, then prune)."""
    return prune_csr(max_pool_windows(windows, owner, n_texts), top_k, threshold)
