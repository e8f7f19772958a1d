"""ONNX export: one graph (masked LM, activation, max-pool, special tokens, pruning) whose
vectors on onnxruntime equal the encoder's, on batch shapes other than the exported one; the ML
Commons zip with ``model_format: ONNX``; special tokens zeroed in every artifact."""

from __future__ import annotations

import json
import warnings
import zipfile

import numpy as np
import onnx
import pytest
import torch

from spladeray.model import SpladeEncoder, compute_idf, save_idf
from spladeray.model.export import export_ml_commons, trace_encoder
from spladeray.model.onnx_export import export_onnx, onnx_session, run_onnx

from helpers import build_tiny_mlm, tiny_tokenizer

TEXTS = [
    "Learned sparse retrieval expands documents with related terms.",
    "p53",
    "",
    "A considerably longer passage about the regulation of gene expression in human cells, "
    "protein folding, and why padding in a batch must never change a vector. " * 3,
    "vitamin D deficiency and bone density in older adults",
]


@pytest.fixture(scope="module")
def encoder(splade_tiny) -> SpladeEncoder:
    return SpladeEncoder.from_pretrained(str(splade_tiny))


@pytest.fixture(scope="module")
def onnx_path(encoder, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    diff = export_onnx(encoder, path)
    assert diff < 1e-4
    return path


def test_one_graph_with_pooling_inside(onnx_path, encoder):
    graph = onnx.load(str(onnx_path)).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in graph.output] == ["output"]
    dims = graph.output[0].type.tensor_type.shape.dim
    assert len(dims) == 2 and dims[1].dim_value == encoder.vocab_size  # pooled, not [b, s, v]
    assert {n.op_type for n in graph.node} >= {"ReduceMax", "Log1p"} or {
        n.op_type for n in graph.node
    } >= {"ReduceMax", "Log"}


@pytest.mark.parametrize("batch", [TEXTS, TEXTS[:1], TEXTS[1:3], TEXTS[::-1] * 2])
def test_onnxruntime_matches_encoder_on_other_shapes(onnx_path, encoder, batch):
    session = onnx_session(onnx_path)
    features = encoder.tokenize(batch, "document")
    got = run_onnx(session, features["input_ids"], features["attention_mask"])
    want = encoder.encode_documents_csr(batch).toarray()
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-4
    assert ((got > 0) == (want > 0)).mean() > 0.9999


def test_ml_commons_zip_carries_onnx(encoder, tmp_path):
    result = export_ml_commons(encoder, tmp_path, name="splade-tiny", model_format="ONNX")
    body = json.loads(result.encoder_zip.register_body_path.read_text())
    assert body["model_format"] == "ONNX" and body["function_name"] == "SPARSE_ENCODING"
    with zipfile.ZipFile(result.encoder_zip.path) as zf:
        assert sorted(zf.namelist()) == ["splade-tiny.onnx", "tokenizer.json"]
    assert result.max_abs_diff < 1e-4
    assert json.loads((tmp_path / "export.json").read_text())["model_format"] == "ONNX"


def test_doc_only_query_side_exports_as_before(splade_tiny, tmp_path):
    base = SpladeEncoder.from_pretrained(str(splade_tiny))
    idf_path = tmp_path / "idf.json"
    save_idf(compute_idf(TEXTS, base.tokenizer), idf_path)
    doc_only = SpladeEncoder.from_pretrained(str(splade_tiny), idf_path=idf_path)
    result = export_ml_commons(doc_only, tmp_path / "out", name="doc-only", model_format="ONNX")
    assert result.tokenizer_zip is not None
    with zipfile.ZipFile(result.tokenizer_zip.path) as zf:
        assert sorted(zf.namelist()) == ["idf.json", "tokenizer.json"]
    assert result.tokenizer_zip.register_body["function_name"] == "SPARSE_TOKENIZE"


def test_special_tokens_zero_in_every_export(splade_tiny, tmp_path):
    """A random tiny model weights [CLS]/[SEP]/[PAD]; encoder, TorchScript and ONNX all zero them."""
    tok = tiny_tokenizer(splade_tiny)
    enc = SpladeEncoder.from_pretrained(str(build_tiny_mlm("bert", tok, tmp_path / "m")))
    special = tok.all_special_ids
    features = enc.tokenize(TEXTS[:3], "document")
    ids, mask = features["input_ids"], features["attention_mask"]
    with torch.no_grad():
        raw = enc.mlm(input_ids=ids, attention_mask=mask).logits.amax(dim=1)
    assert (raw[:, special] > 0).any(), "the random model does weight special tokens"
    export_onnx(enc, tmp_path / "m.onnx")
    from_onnx = run_onnx(onnx_session(tmp_path / "m.onnx"), ids, mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = trace_encoder(enc)
    with torch.no_grad():
        from_ts = scripted({"input_ids": ids, "attention_mask": mask})["output"].numpy()
    ours = enc.encode_documents_csr(TEXTS[:3]).toarray()
    for weights in (from_onnx, from_ts, ours):
        assert (weights[:, special] == 0).all() and (weights > 0).any()
    assert np.abs(from_onnx - ours).max() < 1e-4 and np.abs(from_ts - ours).max() < 1e-4
