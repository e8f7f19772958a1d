"""The ML Commons export to object storage: ``export.output_dir`` as an ``s3://`` URI (moto).

The files are staged locally, uploaded, and ``export.json`` is written last; the result names the
URIs. A bucket that does not exist fails before the model is loaded or traced, naming the URI.
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile

import pytest
import torch

from spladeray import storage
from spladeray.config import parse_config
from spladeray.model import SpladeEncoder
from spladeray.model.export import SPARSE_ENCODING, export_ml_commons

from helpers import build_tiny_mlm, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_model(splade_tiny, tmp_path_factory):
    return build_tiny_mlm("bert", tiny_tokenizer(splade_tiny), tmp_path_factory.mktemp("mlm"))


def _config(model, output_dir: str, **sections):
    return parse_config(
        {
            "run_name": "tiny",
            "model": {"path": str(model), "device": "cpu"},
            "export": {"output_dir": output_dir, "name": "acme/tiny"},
            **sections,
        }
    )


def test_export_to_s3_writes_what_a_local_export_writes(
    s3_bucket, tiny_model, tmp_path, staging_root
):
    from spladeray.mlcommons import run_export

    local = run_export(_config(tiny_model, str(tmp_path / "local")))
    uri = f"{s3_bucket}/export"
    remote = run_export(_config(tiny_model, uri))

    assert storage.list_files(uri) == storage.list_files(tmp_path / "local")
    assert storage.list_files(uri) == ["export.json", "register-tiny.json", "tiny.zip"]
    assert not list(staging_root.iterdir())  # the staging directory is gone

    # local output: local paths as before; remote output: the URIs
    assert local.encoder_zip.path == tmp_path / "local" / "tiny.zip"
    assert remote.encoder_zip.path == f"{uri}/tiny.zip"
    assert remote.encoder_zip.register_body_path == f"{uri}/register-tiny.json"
    assert remote.files == [f"{uri}/tiny.zip", f"{uri}/register-tiny.json"]
    summary = storage.read_json(f"{uri}/export.json")
    assert summary["encoder"]["path"] == f"{uri}/tiny.zip"
    assert summary["encoder"]["sha256"] == remote.encoder_zip.sha256
    body = storage.read_json(f"{uri}/register-tiny.json")
    assert body == remote.encoder_zip.register_body
    assert body["function_name"] == SPARSE_ENCODING and body["name"] == "acme/tiny"
    local_body = json.loads((tmp_path / "local" / "register-tiny.json").read_text())
    assert {k: v for k, v in body.items() if not k.startswith("model_content")} == {
        k: v for k, v in local_body.items() if not k.startswith("model_content")
    }

    # the zip downloads (as register_exported takes it) and opens, and its model runs
    zip_path = storage.local_copy(remote.encoder_zip.path, cache_dir=tmp_path / "cache")
    data = zip_path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == body["model_content_hash_value"]
    assert len(data) == body["model_content_size_in_bytes"]
    with zipfile.ZipFile(zip_path) as zf:
        assert sorted(zf.namelist()) == ["tiny.pt", "tokenizer.json"]
        zf.extractall(tmp_path / "unzipped")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(tmp_path / "unzipped" / "tiny.pt"), map_location="cpu")
    encoder = SpladeEncoder.from_pretrained(str(tiny_model))
    features = encoder.tokenize(["sparse retrieval", "a longer text about proteins"], "document")
    with torch.no_grad():
        got = module(
            {"input_ids": features["input_ids"], "attention_mask": features["attention_mask"]}
        )["output"]
    assert got.shape == (2, encoder.vocab_size)


def test_export_ml_commons_to_a_uri_returns_uris(s3_bucket, tiny_model, staging_root):
    encoder = SpladeEncoder.from_pretrained(str(tiny_model))
    uri = f"{s3_bucket}/models/v1/export"
    result = export_ml_commons(encoder, uri, name="tiny")
    assert result.encoder_zip.path == f"{uri}/tiny.zip"
    assert result.summary()["encoder"]["register_body"] == f"{uri}/register-tiny.json"
    assert storage.read_json(f"{uri}/export.json") == result.summary()
    assert not list(staging_root.iterdir())


def test_missing_bucket_fails_before_any_work(s3, tiny_model, monkeypatch):
    import spladeray.model.export as export_module
    import spladeray.model.loading as loading
    from spladeray.mlcommons import run_export

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the output URI was checked")

    monkeypatch.setattr(loading, "load_encoder_from_config", no_work)
    monkeypatch.setattr(export_module, "trace_encoder", no_work)
    uri = "s3://spladeray-no-such-bucket/export"
    with pytest.raises(storage.StorageError, match=uri):
        run_export(_config(tiny_model, uri))

    encoder = SpladeEncoder.from_pretrained(str(tiny_model))
    with pytest.raises(storage.StorageError, match="bucket 'spladeray-no-such-bucket'.*does not"):
        export_ml_commons(encoder, uri, name="tiny")


def test_register_uploads_the_zip_exported_to_s3(s3_bucket, tiny_model, tmp_path, monkeypatch):
    """``jobs/export.py --register`` with an ``s3://`` output: ML Commons gets the zip's bytes
    from a local copy of the uploaded object (no OpenSearch here: the client call is recorded)."""
    from spladeray.mlcommons import Deployed, MLCommonsClient, run_export

    monkeypatch.setenv("SPLADERAY_CACHE_DIR", str(tmp_path / "cache"))
    sent = []

    def register_and_deploy(self, body, *, zip_path=None, **kwargs):
        sent.append((dict(body), zip_path.read_bytes()))
        return Deployed("model-1", "group-1", "REGISTERED", reused=False)

    monkeypatch.setattr(MLCommonsClient, "register_and_deploy", register_and_deploy)
    uri = f"{s3_bucket}/export"
    cfg = _config(
        tiny_model, uri, index={"opensearch": {"username_env": None, "password_env": None}}
    )
    result = run_export(cfg, register=True, deploy=False)
    ((body, data),) = sent
    assert body == storage.read_json(f"{uri}/register-tiny.json")
    assert data == storage.read_bytes(f"{uri}/tiny.zip")
    assert hashlib.sha256(data).hexdigest() == body["model_content_hash_value"]
    assert result.summary()["ml_commons"][0]["model_id"] == "model-1"
