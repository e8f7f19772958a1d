"""``jobs/export.py --format hf``: save_pretrained + a model card whose YAML front matter parses,
loadable offline by sentence-transformers' SparseEncoder from the local directory."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from sentence_transformers import SparseEncoder

from spladeray.model import SpladeEncoder
from spladeray.model.hub import export_hf, read_front_matter

from helpers import ROOT

REPORT = {
    "title": "SciFact dev",
    "datasets": [{"name": "scifact", "split": "dev", "documents": 1500, "queries": 100}],
    "average": {
        "bm25": {"kind": "bm25", "metrics": {"nDCG@10": 0.6, "R@100": 0.9}, "sparsity": None},
        "splade-tiny": {
            "kind": "sparse",
            "metrics": {"nDCG@10": 0.644, "R@100": 0.93},
            "sparsity": {"query_dims_avg": 21.5, "doc_dims_avg": 180.2},
        },
    },
}


@pytest.fixture(scope="module")
def encoder(splade_tiny) -> SpladeEncoder:
    return SpladeEncoder.from_pretrained(str(splade_tiny))


def test_hf_directory_loads_with_sparse_encoder_and_card_parses(encoder, tmp_path):
    out = export_hf(
        encoder,
        tmp_path / "hf",
        name="acme/splade-tiny-scifact",
        base_model="prajjwal1/bert-tiny",
        train_config={"lr": 5e-5, "max_steps": 20},
        eval_report=REPORT,
    )
    readme = (out / "README.md").read_text()
    meta = read_front_matter(readme)
    assert meta["library_name"] == "sentence-transformers"
    assert meta["base_model"] == "prajjwal1/bert-tiny"
    assert meta["pipeline_tag"] == "feature-extraction"
    assert meta["license"] and "sparse-encoder" in meta["tags"]
    assert "| splade-tiny | sparse | 0.6440 | 0.9300 | 22 | 180 |" in readme
    assert "max_steps: 20" in readme
    for usage in (
        "SpladeEncoder.from_pretrained",
        "SparseEncoder(",
        "AutoModelForMaskedLM",
        "neural_sparse",
    ):
        assert usage in readme
    st = SparseEncoder(str(out), device="cpu", local_files_only=True)
    texts = ["vitamin D is made in the skin", "p53 mutations in mice"]
    theirs = st.encode_document(texts, convert_to_tensor=True).to_dense().numpy()
    assert np.abs(theirs - encoder.encode_documents_csr(texts).toarray()).max() < 1e-4


def test_card_redacts_credentials_in_the_training_config(encoder, tmp_path, monkeypatch):
    """Issue 29 item 12: a ${VAR} secret, a URL password, a pre-signed URL and a key named like
    a credential never reach the published card."""
    monkeypatch.setenv("HF_TOKEN", "hf_s3cretTokenValue")
    config = {
        "output_dir": "s3://b/runs?X-Amz-Signature=sig123",
        "mlflow": {"tracking_uri": "https://bob:pw-secret1@mlflow.example"},
        "name": "run-hf_s3cretTokenValue",
        "hub": {"token": "another-secret-value", "token_env": "HF_TOKEN"},
        "max_steps": 20,
    }
    readme = export_hf(encoder, tmp_path / "hf", name="n", train_config=config) / "README.md"
    text = readme.read_text()
    for secret in ("sig123", "pw-secret1", "bob", "hf_s3cretTokenValue", "another-secret-value"):
        assert secret not in text
    assert "max_steps: 20" in text and "token_env: HF_TOKEN" in text


def test_card_without_report_says_not_evaluated(encoder, tmp_path):
    out = export_hf(encoder, tmp_path / "hf", name="splade-tiny")
    readme = (out / "README.md").read_text()
    assert "Not evaluated" in readme and "Not trained by spladeray" in readme
    assert read_front_matter(readme)["license"] == "other"
    with pytest.raises(ValueError, match="front matter"):
        read_front_matter("# no metadata\n")
    yaml.safe_load(readme.split("---")[1])


def test_export_job_hf_format(tmp_path):
    """The entry point with --format hf on the demo config (no push: that needs the network)."""
    out = tmp_path / "hf"
    proc = subprocess.run(
        [sys.executable, "jobs/export.py", "--format", "hf", "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    body, _, wrote = proc.stdout.rstrip("\n").rpartition("\n")
    summary = json.loads(body[body.index("{") :])
    assert wrote == f"[export] wrote: hf directory {out}"  # the job's last line
    assert summary["format"] == "hf" and (out / "README.md").is_file()
    assert (out / "modules.json").is_file() and (out / "model.safetensors").is_file()


def test_card_embeds_the_training_curves(encoder, tmp_path):
    """The card comes from model/model_card.md; a run's curves.png is copied next to it."""
    curves = tmp_path / "curves.png"
    curves.write_bytes(b"\x89PNG not really")
    out = export_hf(encoder, tmp_path / "hf", name="splade-tiny", curves=curves)
    readme = (out / "README.md").read_text()
    assert "![training curves](curves.png)" in readme
    assert (out / "curves.png").read_bytes() == curves.read_bytes()
    assert "$" not in readme.split("## Usage")[0]  # every template field was filled
