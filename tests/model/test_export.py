"""OpenSearch ML Commons export: the TorchScript model reproduces SpladeEncoder; zip and body.

The model is run the way ML Commons runs it: tokenised by ``tokenizer.json`` from the zip (the
``tokenizers`` library, as DJL does), then ``module({"input_ids", "attention_mask"})["output"]``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from spladeray.model import RandomHeadError, SpladeEncoder, compute_idf
from spladeray.model.export import (
    SPARSE_ENCODING,
    SPARSE_TOKENIZE,
    ExportError,
    export_ml_commons,
    trace_encoder,
)

from helpers import ROOT

TEXTS = [
    "Learned sparse retrieval expands documents with related terms.",
    "p53 mutations in mice",
    "",
    "A considerably longer passage about the regulation of gene expression in human cells, "
    "protein folding, and why padding in a batch must never change a vector.",
]


@pytest.fixture(scope="module")
def encoder(splade_tiny) -> SpladeEncoder:
    return SpladeEncoder.from_pretrained(str(splade_tiny))


@pytest.fixture(scope="module")
def exported(encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    result = export_ml_commons(
        encoder, out, name="acme/splade-tiny", url_prefix="https://models.example.com/x/"
    )
    return out, result


def _run_like_ml_commons(zip_path, texts):
    """Unzip, tokenise with tokenizer.json (batch-padded), run the TorchScript module."""
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        pt_name = next(n for n in names if n.endswith(".pt"))
        target = zip_path.parent / "unzipped"
        zf.extractall(target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript: what ML Commons runs
        module = torch.jit.load(str(target / pt_name), map_location="cpu")
    tok = Tokenizer.from_file(str(target / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(texts)
    ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
    with torch.no_grad():
        out = module({"input_ids": ids, "attention_mask": mask})
    assert set(out) == {"output"}
    return out["output"], tok


def test_torchscript_matches_encoder(exported, encoder):
    out_dir, result = exported
    weights, tok = _run_like_ml_commons(result.encoder_zip.path, TEXTS)
    assert weights.shape == (len(TEXTS), encoder.vocab_size)
    expected = encoder.encode_documents(TEXTS)
    for row, want in zip(weights, expected, strict=True):
        nz = torch.nonzero(row).flatten().tolist()
        got = {tok.id_to_token(i): float(row[i]) for i in nz}
        assert set(got) == set(want)
        for token, w in want.items():
            assert got[token] == pytest.approx(w, abs=1e-4)
    assert result.max_abs_diff <= 1e-4
    assert result.device_portable  # nothing pinned to CPU: ML Commons may load it on a GPU node
    assert weights[TEXTS.index("")].sum() > 0  # [CLS]/[SEP] still encoded, as the encoder does


def test_zip_contents_hash_and_register_body(exported, encoder):
    out_dir, result = exported
    z = result.encoder_zip
    assert z.path.name == "splade-tiny.zip"
    with zipfile.ZipFile(z.path) as zf:
        assert sorted(zf.namelist()) == ["splade-tiny.pt", "tokenizer.json"]
        tokenizer_json = json.loads(zf.read("tokenizer.json"))
    assert tokenizer_json["truncation"]["max_length"] == encoder.max_document_length
    data = z.path.read_bytes()
    body = json.loads((out_dir / "register-splade-tiny.json").read_text())
    assert body == z.register_body
    assert body["model_content_hash_value"] == hashlib.sha256(data).hexdigest() == z.sha256
    assert body["model_content_size_in_bytes"] == len(data) == z.size_bytes
    assert body["function_name"] == SPARSE_ENCODING
    assert body["model_format"] == "TORCH_SCRIPT"
    assert body["name"] == "acme/splade-tiny" and body["version"] == "1.0.0"
    assert body["url"] == "https://models.example.com/x/splade-tiny.zip"
    assert result.tokenizer_zip is None
    summary = json.loads((out_dir / "export.json").read_text())
    assert summary["encoder"]["sha256"] == z.sha256


def test_doc_only_export_has_sparse_tokenize_side_and_pruning(splade_tiny, tmp_path):
    tok_texts = TEXTS + ["mice cells protein", "retrieval of documents"]
    from transformers import AutoTokenizer

    idf = compute_idf(tok_texts, AutoTokenizer.from_pretrained(splade_tiny))
    (tmp_path / "idf.json").write_text(json.dumps(idf))
    enc = SpladeEncoder.from_pretrained(
        str(splade_tiny), idf_path=tmp_path / "idf.json", top_k=8, max_query_length=32
    )
    assert enc.doc_only
    result = export_ml_commons(enc, tmp_path / "out", name="doconly")
    weights, tok = _run_like_ml_commons(result.encoder_zip.path, TEXTS)
    assert int((weights > 0).sum(dim=1).max()) <= 8
    for row, want in zip(weights, enc.encode_documents(TEXTS), strict=True):
        got = {tok.id_to_token(i): float(row[i]) for i in torch.nonzero(row).flatten().tolist()}
        assert set(got) == set(want)
        np.testing.assert_allclose([got[t] for t in want], list(want.values()), atol=1e-4)

    q = result.tokenizer_zip
    assert q is not None and q.function_name == SPARSE_TOKENIZE
    with zipfile.ZipFile(q.path) as zf:
        assert sorted(zf.namelist()) == ["idf.json", "tokenizer.json"]
        assert json.loads(zf.read("idf.json")) == pytest.approx(idf)
        assert json.loads(zf.read("tokenizer.json"))["truncation"]["max_length"] == 32
    assert q.register_body["function_name"] == SPARSE_TOKENIZE
    assert q.register_body["name"] == "doconly-query"
    assert (
        q.register_body["model_content_hash_value"]
        == hashlib.sha256(q.path.read_bytes()).hexdigest()
    )
    assert "url" not in q.register_body


def test_random_head_is_refused(encoder, tmp_path):
    encoder.metadata["random_head"] = True
    try:
        with pytest.raises(RandomHeadError):
            export_ml_commons(encoder, tmp_path, name="x")
    finally:
        encoder.metadata["random_head"] = False
    assert not list(tmp_path.iterdir())


def test_trace_needs_a_padded_example(encoder):
    with pytest.raises(ExportError, match="padding"):
        trace_encoder(encoder, example_texts=["same", "same"])


@pytest.mark.parametrize("arch", ["roberta"])  # RoBERTa: position ids from input, token types
def test_other_architectures_export_portably(arch, splade_tiny, tmp_path):
    from helpers import build_tiny_mlm, tiny_tokenizer

    path = build_tiny_mlm(arch, tiny_tokenizer(splade_tiny), tmp_path / arch)
    enc = SpladeEncoder.from_pretrained(str(path), top_k=16)
    result = export_ml_commons(enc, tmp_path / "out", name=arch)
    assert result.max_abs_diff <= 1e-4 and result.device_portable


def test_export_job_runs_on_its_default_config(tmp_path):
    """``python jobs/export.py`` with no --config: the demo's model, exported as ML Commons zips;
    the job prints the config it used and the export summary (JSON)."""
    import os
    import subprocess
    import sys

    root = ROOT
    env = {**os.environ, "PYTHONPATH": str(root / "platform")}
    out_dir = tmp_path / "export"
    proc = subprocess.run(
        [sys.executable, str(root / "jobs" / "export.py"), "--set", f"export.output_dir={out_dir}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, _, rest = proc.stdout.partition("\n")
    assert first == f"[config] {(root / 'configs' / 'demo.yaml').resolve()} " + (
        "(the default; choose another with --config)"
    )
    body, _, wrote = rest.rstrip("\n").rpartition("\n")
    summary = json.loads(body)
    assert wrote == f"[export] wrote: ML Commons zips {out_dir}"  # the job's last line
    assert summary["encoder"]["function_name"] == SPARSE_ENCODING
    assert (out_dir / "demo.zip").is_file() and "ml_commons" not in summary
