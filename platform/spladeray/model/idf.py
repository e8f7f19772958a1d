"""IDF tables for inference-free (doc-only) query encoding.

``idf.json`` maps token strings to weights, the format OpenSearch's ``SPARSE_TOKENIZE`` and
sentence-transformers' ``SparseStaticEmbedding.from_json`` read. A query vector is then
``q_t = idf[t]`` for each distinct token ``t`` of the query (no special tokens), zeros dropped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm


def idf_weight(df: np.ndarray, num_docs: int) -> np.ndarray:
    """``idf(t) = log(1 + (N - df_t + 0.5) / (df_t + 0.5))`` (the BM25 / Lucene form, always > 0)."""
    return np.log1p((num_docs - df + 0.5) / (df + 0.5))


def compute_idf(
    texts: Iterable[str],
    tokenizer,
    *,
    max_length: int | None = None,
    batch_size: int = 1024,
    show_progress: bool = False,
) -> dict[str, float]:
    """Document frequencies of every token over ``texts``, turned into an ``idf.json`` table.

    Streams: only one batch of texts and a ``[vocab]`` counter are held at a time. Tokens that
    never occur get no entry (their query weight is 0, as in OpenSearch's tables).
    """
    vocab_size = len(tokenizer)
    df = np.zeros(vocab_size, dtype=np.int64)
    num_docs = 0
    batch: list[str] = []
    progress = tqdm(desc="idf", unit="doc", disable=not show_progress)

    def flush() -> None:
        nonlocal num_docs
        enc = tokenizer(
            batch,
            add_special_tokens=False,
            truncation=max_length is not None,
            max_length=max_length,
        )["input_ids"]
        for ids in enc:
            if ids:
                df[np.unique(np.asarray(ids, dtype=np.int64))] += 1
        num_docs += len(batch)
        progress.update(len(batch))
        batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    progress.close()
    if num_docs == 0:
        raise ValueError("compute_idf: no texts given")
    present = np.nonzero(df)[0]
    weights = idf_weight(df[present].astype(np.float64), num_docs)
    tokens = tokenizer.convert_ids_to_tokens(present.tolist())
    return {tok: float(w) for tok, w in zip(tokens, weights, strict=True)}


def load_idf(path: str | Path) -> dict[str, float]:
    """Read ``idf.json``; non-finite or negative weights are an error naming the token."""
    table = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(table, dict):
        raise ValueError(f"{path}: idf.json must be an object of token -> weight")
    for tok, w in table.items():
        if not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise ValueError(f"{path}: token {tok!r} has invalid idf weight {w!r}")
    return {str(k): float(v) for k, v in table.items()}


def save_idf(table: dict[str, float], path: str | Path) -> None:
    """Write ``idf.json`` (UTF-8, tokens kept as they are)."""
    Path(path).write_text(json.dumps(table, ensure_ascii=False), encoding="utf-8")


def idf_to_tensor(table: dict[str, float], tokenizer) -> torch.Tensor:
    """A dense ``[vocab]`` weight vector; tokens unknown to the tokenizer are an error."""
    weight = torch.zeros(len(tokenizer), dtype=torch.float32)
    ids = tokenizer.convert_tokens_to_ids(list(table))
    unk = tokenizer.unk_token_id
    for (tok, w), tid in zip(table.items(), ids, strict=True):
        if tid is None or (tid == unk and tok != tokenizer.unk_token):
            raise ValueError(f"idf table token {tok!r} is not in the tokenizer's vocabulary")
        weight[tid] = w
    return weight


def tensor_to_idf(weight: torch.Tensor, tokenizer) -> dict[str, float]:
    """The inverse of :func:`idf_to_tensor`, keeping only non-zero weights."""
    w = weight.detach().float().cpu()
    ids = torch.nonzero(w > 0).flatten().tolist()
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return {tok: float(w[i]) for tok, i in zip(tokens, ids, strict=True)}
