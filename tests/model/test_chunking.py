"""Chunked document encoding (model.document_stride): windows max-pooled, exact SPLADE-max."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spladeray.config import parse_config
from spladeray.model import SpladeEncoder
from spladeray.model.chunking import document_windows, max_pool_windows

LONG = " ".join(
    f"Sentence {i} says vitamin D, BRCA1, insulin and lymphocyte number {i * 7} matter."
    for i in range(40)
)
SHORT = "Vitamin D deficiency and bone density."


@pytest.fixture(scope="module")
def chunked(splade_tiny):
    return SpladeEncoder.from_pretrained(
        str(splade_tiny), max_document_length=64, document_stride=16, batch_size=3
    )


@pytest.fixture(scope="module")
def truncating(splade_tiny):
    return SpladeEncoder.from_pretrained(str(splade_tiny), max_document_length=64, batch_size=3)


def _window_vectors(encoder, ids: list[int]) -> np.ndarray:
    with torch.inference_mode():
        t = torch.tensor([ids])
        return encoder(t, torch.ones_like(t)).float().numpy()[0]


def test_long_document_is_max_of_its_windows_encoded_one_by_one(chunked):
    tok = chunked.tokenizer
    n_tokens = len(tok(LONG)["input_ids"])
    windows, owner = document_windows(tok, [LONG], 64, 16)
    assert n_tokens > 64 * 3 and len(windows) >= 4 and set(owner) == {0}
    # windows overlap by exactly the stride, and together cover every content token
    content = [w[1:-1] for w in windows]
    assert all(a[-16:] == b[:16] for a, b in zip(content, content[1:], strict=False))
    covered = content[0] + [t for c in content[1:] for t in c[16:]]
    assert covered == tok(LONG, add_special_tokens=False)["input_ids"]

    expected = np.max([_window_vectors(chunked, w) for w in windows], axis=0)
    # the long doc sits between a short one and another long one: batches mix documents
    got = chunked.encode_documents_csr([SHORT, LONG, LONG[::-1]]).toarray()
    np.testing.assert_allclose(got[1], expected, rtol=1e-5, atol=1e-6)
    # more of the document reaches the vector than with truncation
    first = _window_vectors(chunked, windows[0])
    assert (got[1] > 0).sum() > (first > 0).sum()


def test_short_document_is_unchanged(chunked, truncating):
    a = chunked.encode_documents_csr([SHORT, "x"]).toarray()
    b = truncating.encode_documents_csr([SHORT, "x"]).toarray()
    np.testing.assert_array_equal(a, b)
    # queries are never chunked
    q = [LONG]
    np.testing.assert_array_equal(
        chunked.encode_queries_csr(q).toarray(), truncating.encode_queries_csr(q).toarray()
    )


def test_pruning_applies_to_the_pooled_vector(splade_tiny, chunked):
    pruned = SpladeEncoder.from_pretrained(
        str(splade_tiny), max_document_length=64, document_stride=16, top_k=20
    )
    full = chunked.encode_documents_csr([LONG]).toarray()[0]
    top = pruned.encode_documents_csr([LONG]).toarray()[0]
    assert (top > 0).sum() == 20
    keep = np.argsort(-full, kind="stable")[:20]
    np.testing.assert_allclose(top[keep], full[keep], rtol=1e-6)


def test_max_pool_windows_by_owner():
    import scipy.sparse as sp

    rows = sp.csr_matrix(np.array([[1, 0, 3], [2, 0, 1], [0, 5, 0], [0, 0, 0]], np.float32))
    pooled = max_pool_windows(rows, np.array([0, 0, 2, 2]), 3).toarray()
    np.testing.assert_array_equal(pooled, [[2, 0, 3], [0, 0, 0], [0, 5, 0]])


def test_bad_stride_and_sum_pooling_are_refused(splade_tiny):
    with pytest.raises(ValueError, match="document_stride"):
        SpladeEncoder.from_pretrained(str(splade_tiny), max_document_length=64, document_stride=62)
    with pytest.raises(ValueError, match="pooling='max'"):
        SpladeEncoder.from_pretrained(str(splade_tiny), pooling="sum", document_stride=8)
    with pytest.raises(ValueError, match="smaller than"):
        parse_config({"model": {"path": str(splade_tiny), "document_stride": 256}})


def test_config_reaches_the_encoder_and_its_saved_settings(splade_tiny, tmp_path):
    from spladeray.model.loading import load_encoder_from_config

    cfg = parse_config(
        {"model": {"path": str(splade_tiny), "max_document_length": 64, "document_stride": 8}}
    )
    encoder = load_encoder_from_config(cfg.model)
    assert encoder.document_stride == 8
    encoder.save_pretrained(str(tmp_path / "m"))
    assert SpladeEncoder.from_pretrained(str(tmp_path / "m")).document_stride == 8
