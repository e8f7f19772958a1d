"""SpladeEncoder: equality with sentence-transformers, every loading case, doc-only mode."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from sentence_transformers import SparseEncoder
from transformers import AutoModelForMaskedLM

from spladeray.data.beir import doc_text, iter_corpus
from spladeray.index import LocalIndex
from spladeray.index.build import index_documents
from spladeray.model import RandomHeadError, SpladeEncoder, compute_idf, load_idf, save_idf
from spladeray.model.pooling import pool_full_logits

from helpers import build_tiny_base, build_tiny_mlm, no_special, tiny_tokenizer


@pytest.fixture(scope="module")
def texts(scifact):
    return [doc_text(d) for d in iter_corpus(scifact, limit=40)]


@pytest.fixture(scope="module")
def encoder(splade_tiny):
    return SpladeEncoder.from_pretrained(str(splade_tiny))


def _st_dense(model: SparseEncoder, texts, kind: str) -> np.ndarray:
    fn = model.encode_query if kind == "query" else model.encode_document
    return fn(texts, batch_size=16, convert_to_tensor=True).to_dense().cpu().numpy()


def test_special_tokens_get_weight_zero(splade_tiny, tmp_path):
    """[CLS], [SEP], [PAD] ... are never terms: zero in every vector, whatever the model says."""
    tok = tiny_tokenizer(splade_tiny)
    enc = SpladeEncoder.from_pretrained(str(build_tiny_mlm("bert", tok, tmp_path / "m")))
    batch = enc.tokenize(["protein folding in cells", "a b"])
    with torch.no_grad():
        logits = enc.mlm(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
        naive = pool_full_logits(logits, batch["attention_mask"])
    special = tok.all_special_ids
    assert (naive[:, special] > 0).any(), "the random model does weight special tokens"
    for weights in (
        enc.encode_documents_csr(["protein folding in cells", "a b"]).toarray(),
        enc.encode_queries_csr(["protein folding in cells"]).toarray(),
    ):
        assert (weights[:, special] == 0).all() and (weights > 0).any()


def test_vectors_equal_sentence_transformers(encoder, splade_tiny, texts):
    st = SparseEncoder(str(splade_tiny), device="cpu")
    st.max_seq_length = 256
    ours = encoder.encode_documents_csr(texts).toarray()
    theirs = _st_dense(st, texts, "document")
    assert ours.shape == theirs.shape == (len(texts), 30522)
    assert np.abs(ours - theirs).max() < 1e-4
    # same sparsity pattern, not just close numbers: nothing dropped, nothing invented
    assert ((ours > 1e-4) == (theirs > 1e-4)).mean() > 0.9999
    st.max_seq_length = 64
    q = ["What causes vitamin D deficiency?", "BRCA1 mutations and breast cancer risk"]
    assert np.abs(encoder.encode_queries_csr(q).toarray() - _st_dense(st, q, "query")).max() < 1e-4


def test_dict_form_matches_matrix_and_drops_zeros(encoder, texts):
    dicts = encoder.encode_documents(texts[:3])
    matrix = encoder.encode_documents_csr(texts[:3])
    for row, vec in enumerate(dicts):
        assert all(w > 0 for w in vec.values())
        assert len(vec) == matrix[row].nnz
        tid = encoder.tokenizer.convert_tokens_to_ids(next(iter(vec)))
        assert vec[next(iter(vec))] == pytest.approx(matrix[row, tid])
    top = encoder.decode(dicts[0], 5)
    assert len(top) == 5 and top[0][1] == max(dicts[0].values())


def test_order_is_preserved_with_length_bucketing(encoder):
    texts = ["short", "a much longer text " * 20, "medium sized text here", "x"]
    together = encoder.encode_documents(texts)
    one_by_one = [encoder.encode_documents([t])[0] for t in texts]
    for a, b in zip(together, one_by_one, strict=True):
        assert a.keys() == b.keys()
        assert max(abs(a[k] - b[k]) for k in a) < 1e-4


def test_save_and_reload_both_ways(encoder, texts, tmp_path):
    encoder.save_pretrained(str(tmp_path / "m"))
    ours = encoder.encode_documents_csr(texts[:10]).toarray()
    again = SpladeEncoder.from_pretrained(str(tmp_path / "m"))
    assert np.abs(again.encode_documents_csr(texts[:10]).toarray() - ours).max() < 1e-5
    st = SparseEncoder(str(tmp_path / "m"), device="cpu")
    assert np.abs(_st_dense(st, texts[:10], "document") - ours).max() < 1e-4
    assert type(AutoModelForMaskedLM.from_pretrained(tmp_path / "m")).__name__ == "BertForMaskedLM"
    meta = json.loads((tmp_path / "m" / "spladeray.json").read_text())
    assert meta["config"]["max_document_length"] == 256
    assert meta["metadata"]["random_head"] is False


def test_settings_survive_save(encoder, tmp_path):
    enc = SpladeEncoder.from_pretrained(
        str(encoder.metadata["source"]), top_k=16, max_query_length=32
    )
    enc.save_pretrained(str(tmp_path / "m"))
    again = SpladeEncoder.from_pretrained(str(tmp_path / "m"))
    assert (again.top_k, again.max_query_length) == (16, 32)
    assert max(len(v) for v in again.encode_documents(["a long text about proteins " * 10])) == 16


@pytest.mark.parametrize("arch", ["bert", "distilbert", "roberta"])
def test_plain_masked_lm_fast_path_equals_naive(arch, splade_tiny, tmp_path):
    """Case (b): any masked-LM directory; our chunked pooling equals full-logit pooling."""
    tok = tiny_tokenizer(splade_tiny)
    path = build_tiny_mlm(arch, tok, tmp_path / arch)
    enc = SpladeEncoder.from_pretrained(str(path))
    assert enc._parts is not None, "known architectures take the fast path"
    assert not enc.random_head
    batch = enc.tokenize(["protein folding in cells", "a b", "vitamin d " * 30])
    with torch.no_grad():
        fast = enc(batch["input_ids"], batch["attention_mask"])
        logits = enc.mlm(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits
        naive = no_special(enc, pool_full_logits(logits, batch["attention_mask"]))
    assert torch.allclose(fast, naive, atol=1e-5)
    enc.pooling = "sum"
    with torch.no_grad():
        fast_sum = enc(batch["input_ids"], batch["attention_mask"])
    naive_sum = no_special(enc, pool_full_logits(logits, batch["attention_mask"], pooling="sum"))
    assert torch.allclose(fast_sum, naive_sum, atol=1e-4)


def _base_encoder_dir(splade_tiny, out):
    tok = tiny_tokenizer(splade_tiny)
    return build_tiny_base(tok, out), tok


def test_legacy_head_file(splade_tiny, tmp_path):
    """Case (c): base encoder + neural_sparse_head.pt."""
    base, tok = _base_encoder_dir(splade_tiny, tmp_path / "legacy")
    head = torch.nn.Linear(32, len(tok))
    torch.save(head.state_dict(), tmp_path / "legacy" / "neural_sparse_head.pt")
    enc = SpladeEncoder.from_pretrained(str(tmp_path / "legacy"))
    assert not enc.random_head
    enc.check_servable()
    batch = enc.tokenize(["sparse retrieval with a legacy head"])
    with torch.no_grad():
        hidden = base(**batch).last_hidden_state
        expected = no_special(enc, pool_full_logits(head(hidden), batch["attention_mask"]))
        got = enc(batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(got, expected, atol=1e-5)
    enc.save_pretrained(str(tmp_path / "legacy2"))
    again = SpladeEncoder.from_pretrained(str(tmp_path / "legacy2"))
    with torch.no_grad():
        assert torch.allclose(again(batch["input_ids"], batch["attention_mask"]), got, atol=1e-6)


def test_missing_head_warns_and_is_refused(splade_tiny, tmp_path, caplog):
    """A base encoder without its head: loud warning, metadata, refused unless allowed."""
    _base_encoder_dir(splade_tiny, tmp_path / "nohead")
    with caplog.at_level(logging.WARNING, logger="spladeray.model.loading"):
        enc = SpladeEncoder.from_pretrained(str(tmp_path / "nohead"))
    assert "RANDOM PROJECTION HEAD" in caplog.text
    assert enc.random_head and enc.metadata["random_head_reason"]
    with pytest.raises(RandomHeadError, match="allow_random_head"):
        enc.check_servable()
    with pytest.raises(RandomHeadError):
        index_documents(enc, LocalIndex(tmp_path / "idx"), "x", [{"_id": "1", "text": "t"}])
    enc.check_servable(allow_random_head=True)
    enc.save_pretrained(str(tmp_path / "saved"))
    again = SpladeEncoder.from_pretrained(str(tmp_path / "saved"))
    assert again.random_head, "the flag survives save/load"


def test_doc_only_queries_are_idf_lookups(splade_tiny, tmp_path, texts):
    tok = tiny_tokenizer(splade_tiny)
    idf = compute_idf(texts, tok)
    save_idf(idf, tmp_path / "idf.json")
    assert load_idf(tmp_path / "idf.json") == idf
    enc = SpladeEncoder.from_pretrained(str(splade_tiny), idf_path=tmp_path / "idf.json")
    assert enc.doc_only
    query = "vitamin D deficiency causes disease disease"
    vec = enc.encode_queries([query])[0]
    tokens = set(tok.tokenize(query))
    expected = {t: idf[t] for t in tokens if t in idf}
    assert vec.keys() == expected.keys()
    assert all(vec[t] == pytest.approx(expected[t]) for t in vec)
    # documents still go through the model
    assert len(enc.encode_documents([texts[0]])[0]) > len(tok.tokenize(texts[0])) // 2


def test_idf_formula(splade_tiny):
    tok = tiny_tokenizer(splade_tiny)
    idf = compute_idf(["apple banana", "apple cherry", "apple"], tok)
    n = 3
    assert idf["apple"] == pytest.approx(np.log1p((n - 3 + 0.5) / 3.5))
    assert idf["banana"] == pytest.approx(np.log1p((n - 1 + 0.5) / 1.5))
    assert idf["banana"] > idf["apple"] > 0
    assert "zebra" not in idf


def test_doc_only_save_loads_in_sentence_transformers(splade_tiny, tmp_path, texts):
    tok = tiny_tokenizer(splade_tiny)
    save_idf(compute_idf(texts, tok), tmp_path / "idf.json")
    enc = SpladeEncoder.from_pretrained(str(splade_tiny), idf_path=tmp_path / "idf.json")
    enc.save_pretrained(str(tmp_path / "doconly"))
    assert (tmp_path / "doconly" / "idf.json").is_file()
    st = SparseEncoder(str(tmp_path / "doconly"), device="cpu")
    queries = ["vitamin D deficiency", "cancer risk in smokers"]
    assert (
        np.abs(_st_dense(st, queries, "query") - enc.encode_queries_csr(queries).toarray()).max()
        < 1e-5
    )
    docs = texts[:5]
    st.max_seq_length = 256
    assert (
        np.abs(_st_dense(st, docs, "document") - enc.encode_documents_csr(docs).toarray()).max()
        < 1e-4
    )
    again = SpladeEncoder.from_pretrained(str(tmp_path / "doconly"))
    assert again.doc_only and again.encode_queries(queries) == enc.encode_queries(queries)


def test_pruning(encoder, texts):
    full = encoder.encode_documents(texts[:4])
    pruned = SpladeEncoder.from_pretrained(encoder.metadata["source"], top_k=10, threshold=0.5)
    for vec, ref in zip(pruned.encode_documents(texts[:4]), full, strict=True):
        assert len(vec) <= 10 and min(vec.values()) > 0.5
        assert sorted(vec, key=vec.get)[-1] == max(ref, key=ref.get)


def test_bad_input_is_a_clear_error(encoder):
    with pytest.raises(TypeError, match="single string"):
        encoder.encode_documents("not a list")
    with pytest.raises(TypeError, match="text 1 is int"):
        encoder.encode_documents(["ok", 3])
    with pytest.raises(ValueError, match="kind"):
        encoder.encode_csr(["x"], kind="passage")
    assert encoder.encode_documents([]) == []


def test_progress_hook_counts_every_text_once_across_tokenize_chunks(splade_tiny, monkeypatch):
    """``SpladeEncoder.progress`` (rank 0's validation progress): after each batch, counts of the
    whole call, also when the texts are tokenized a chunk at a time."""
    from spladeray.model import encoder as encoder_module

    monkeypatch.setattr(encoder_module, "TOKENIZE_CHUNK", 5)
    enc = SpladeEncoder.from_pretrained(splade_tiny)
    calls = []
    enc.progress = lambda kind, done, total: calls.append((kind, done, total))
    enc.encode_csr([f"text number {i}" for i in range(12)], "document", batch_size=2)
    assert calls[-1] == ("document", 12, 12) and {t for _, _, t in calls} == {12}
    assert [d for _, d, _ in calls] == sorted(d for _, d, _ in calls)
    assert enc.progress is not None  # the caller's hook is back after the chunks
