"""The side-by-side of bench/train_gpu.py: sentence-transformers against spladeray on one device,
same model directory, batch, lengths and bf16, in the same process.

- Training step: ``SparseEncoder`` + ``SpladeLoss(SparseMultipleNegativesRankingLoss, FLOPS on
  documents and queries)`` in a plain loop over its loss (what its trainer runs per step, without
  the trainer's data loading), against spladeray's :class:`PairEncoder` + :class:`InfoNCELoss` +
  :class:`FlopsRegularizer` with the same lambdas. Both: AdamW, BF16 autocast, forward + backward
  + optimizer step; the same tokenised texts (queries, positives, ``negatives`` hard negatives
  per query). Seconds per step, the median of ``steps`` timed steps after ``warmup``.
- Encoding: ``SparseEncoder.encode_document`` (weights cast to bf16, its usual fast path) against
  :meth:`SpladeEncoder.encode_documents` (``dtype: bfloat16``), same documents and batch size.

Ratios are spladeray's speed over sentence-transformers' (> 1: spladeray faster).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

QUERY_LAMBDA, DOCUMENT_LAMBDA = 5e-4, 3e-4  # configs/train_8gpu.yaml's regularizer


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _median_step(step, device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _to_device(features: dict, device) -> dict:
    """Tensors to ``device``, anything else as is (what sentence-transformers' trainer does)."""
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in features.items()}


def st_train_step(model_dir: Path, queries, positives, negatives, *, device, doc_length):
    """A closure running one sentence-transformers SpladeLoss training step."""
    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.losses import (
        SparseMultipleNegativesRankingLoss,
        SpladeLoss,
    )

    model = SparseEncoder(str(model_dir), device=str(device))
    model.max_seq_length = doc_length
    model.train()
    loss = SpladeLoss(
        model,
        loss=SparseMultipleNegativesRankingLoss(model),
        document_regularizer_weight=DOCUMENT_LAMBDA,
        query_regularizer_weight=QUERY_LAMBDA,
    )
    n = len(negatives) // len(queries)
    columns = [queries, positives] + [negatives[k::n] for k in range(n)]
    # ``preprocess`` since 6.1 (``tokenize`` warns there); the GPU image's 6.0.1 has ``tokenize``
    prepare = getattr(model, "preprocess", None) or model.tokenize
    features = [_to_device(prepare(list(c)), device) for c in columns]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    device_type = torch.device(device).type

    def step() -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            out = loss(features, None)
        total = sum(out.values()) if isinstance(out, dict) else out
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def spladeray_train_step(model_dir: Path, queries, positives, negatives, *, device, doc_length):
    """A closure running one spladeray training step on the same texts."""
    import torch

    from spladeray.model.loading import load_encoder
    from spladeray.train.losses import FlopsRegularizer, InfoNCELoss, SparseBatch
    from spladeray.train.step import PairEncoder

    encoder = load_encoder(str(model_dir), max_document_length=doc_length).train()
    pair = PairEncoder(encoder).to(device)
    n = len(negatives) // len(queries)
    # the same document order as SpladeLoss's columns: positives, then negative k of every query
    by_query = [negatives[i * n : (i + 1) * n] for i in range(len(queries))]
    docs = list(positives) + [d for row in by_query for d in row]
    qf = {k: v.to(device) for k, v in encoder.tokenize(queries, "query").items()}
    df = {k: v.to(device) for k, v in encoder.tokenize(docs, "document").items()}
    infonce, flops = InfoNCELoss(), FlopsRegularizer("flops")
    optimizer = torch.optim.AdamW(pair.parameters(), lr=2e-5)
    device_type = torch.device(device).type
    b = len(queries)

    def step() -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            q, d = pair(qf, df)
        q, d = q.float(), d.float()
        batch = SparseBatch(queries=q, positives=d[:b], negatives=d[b:].view(b, n, -1))
        total = infonce(batch) + DOCUMENT_LAMBDA * flops(d) + QUERY_LAMBDA * flops(q)
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def compare_training(
    model_dir: Path,
    queries,
    positives,
    negatives,
    *,
    device,
    doc_length,
    warmup: int = 2,
    steps: int = 5,
) -> dict:
    """Seconds per training step of each side and spladeray's speed-up."""
    import torch

    kwargs = dict(device=device, doc_length=doc_length)
    torch.manual_seed(0)
    st = _median_step(
        st_train_step(model_dir, queries, positives, negatives, **kwargs), device, warmup, steps
    )
    torch.manual_seed(0)
    ours = _median_step(
        spladeray_train_step(model_dir, queries, positives, negatives, **kwargs),
        device,
        warmup,
        steps,
    )
    return {
        "st_step_s": round(st, 5),
        "spladeray_step_s": round(ours, 5),
        "train_step_ratio": round(st / ours, 3),
    }


def compare_encoding(
    model_dir: Path, docs: list[str], *, device, doc_length, batch_size: int = 128
) -> dict:
    """Documents/s of ``SparseEncoder.encode_document`` and ``SpladeEncoder.encode_documents``
    (bf16 both), after one warm-up batch each."""
    import torch
    from sentence_transformers import SparseEncoder

    from spladeray.model.loading import load_encoder

    st = SparseEncoder(str(model_dir), device=str(device)).to(torch.bfloat16)
    st.max_seq_length = doc_length
    st.eval()
    ours = load_encoder(
        str(model_dir),
        device=str(device),
        dtype="bfloat16",
        batch_size=batch_size,
        max_document_length=doc_length,
    )

    def timed(run) -> float:
        run(docs[:batch_size])
        _sync(device)
        t0 = time.perf_counter()
        run(docs)
        _sync(device)
        return len(docs) / (time.perf_counter() - t0)

    st_rate = timed(
        lambda d: st.encode_document(d, batch_size=batch_size, convert_to_sparse_tensor=True)
    )
    our_rate = timed(ours.encode_documents)
    return {
        "st_encode_docs_per_s": round(st_rate, 1),
        "spladeray_encode_docs_per_s": round(our_rate, 1),
        "encode_ratio": round(our_rate / st_rate, 3),
    }
