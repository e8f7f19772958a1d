"""Quality guard of the reduced-precision path: on SciFact dev (the offline assets), bfloat16
retrieves as well as fp32 (nDCG@10 within 0.002) and keeps each document's top-20 tokens
(overlap >= 0.95); the output is fp32 and special tokens stay zero. Also the precision rules."""

from __future__ import annotations

import logging

import pytest
import torch

from spladeray.eval.precision import compare_precision
from spladeray.model import SpladeEncoder
from spladeray.model.precision import FP32, normalize, plan

# The first 300 of configs/demo.yaml's 1,500 documents (the same kind of slice, 8 dev queries
# judged there): seconds for both precisions on 2 idle cores. Measured: nDCG@10 delta 0.0,
# top-20 overlap min 0.95 / mean 0.997, max abs diff 0.0215 (docs/model.md).
CORPUS_LIMIT = 300


@pytest.fixture(scope="module")
def encoder(splade_tiny) -> SpladeEncoder:
    return SpladeEncoder.from_pretrained(str(splade_tiny), max_document_length=256)


def test_bfloat16_quality_guard(encoder, scifact):
    report = compare_precision(encoder, "bfloat16", scifact, corpus_limit=CORPUS_LIMIT)
    assert report.queries >= 5 and report.documents == CORPUS_LIMIT
    assert abs(report.ndcg_delta) <= 0.002, report
    assert report.top20_overlap_min >= 0.95, report
    assert 0 < report.max_abs_diff < 0.1, "bf16 must actually run, and stay close"
    assert encoder.precision == "float32", "compare_precision restores the encoder's precision"


def test_reduced_precision_output_is_fp32_and_sparse(encoder):
    texts = ["vitamin D deficiency", "a much longer text about protein folding " * 8]
    encoder.precision = "bfloat16"
    try:
        assert encoder.precision_plan().projection == torch.bfloat16
        csr = encoder.encode_documents_csr(texts)
    finally:
        encoder.precision = "float32"
    assert csr.dtype.name == "float32" and csr.nnz > 0
    assert csr[:, encoder.tokenizer.all_special_ids].nnz == 0


def test_precision_rules(caplog):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert plan("float32", cpu) is FP32 and plan("float32", cuda) is FP32
    assert plan("bfloat16", cpu).projection == torch.bfloat16
    assert plan("bfloat16", cpu).backbone is None  # the backbone stays fp32 on CPU
    assert plan("float16", cuda).projection == plan("float16", cuda).backbone == torch.float16
    with caplog.at_level(logging.WARNING):
        assert plan("float16", cpu) is FP32  # no fast fp16 kernels on CPU: a warning, fp32
    assert normalize("bf16") == "bfloat16" and normalize(torch.float16) == "float16"
    assert normalize(None) == "float32"
    with pytest.raises(ValueError, match="dtype must be one of"):
        normalize("int4")
