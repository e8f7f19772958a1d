"""Training with everything it reads and writes in object storage, on a real S3 API (moto).

The prepared data, the base model, the checkpoints and ``baselines.json`` live under ``s3://``
URIs; the job runs as a subprocess that starts its own local Ray cluster, so the Ray Train workers
inherit the S3 endpoint and credentials from the environment, as on a cluster whose nodes have
them. Nothing of the run may land on local disk except the exported model copy the config asks for.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from helpers import (
    ROOT,
    build_tiny_mlm,
    tiny_tokenizer,
    tiny_train_section,
    write_beir,
    write_prepared,
)

pytestmark = pytest.mark.timeout(900)


def _train_cfg(bucket: str, out: str, **train) -> dict:
    data = train.pop("data_dir", f"{bucket}/prepared")
    return {
        "run_name": "s3job",
        "model": {"path": f"{bucket}/models/tiny"},
        "ray": {"num_cpus": 3, "include_dashboard": False},
        "train": tiny_train_section(out, data, storage_path=f"{bucket}/runs", **train),
    }


def test_two_workers_train_from_and_to_s3(s3, s3_bucket, tmp_path, splade_tiny):
    """Model, prepared data, checkpoints, baselines, TensorBoard and the exported model: all s3://."""
    from spladeray import storage
    from spladeray.model import SpladeEncoder

    model = build_tiny_mlm("bert", tiny_tokenizer(splade_tiny), tmp_path / "mlm")
    storage.upload(model, f"{s3_bucket}/models/tiny")
    storage.upload(
        write_prepared(tmp_path / "prepared", n_rows=16, n_neg=1), f"{s3_bucket}/prepared"
    )
    work = tmp_path / "work"  # the job's cwd: a relative runs/ would land here
    work.mkdir()
    cfg_path = tmp_path / "train.yaml"
    cfg = _train_cfg(s3_bucket, f"{s3_bucket}/out", tensorboard=True)
    cfg_path.write_text(yaml.safe_dump(cfg))

    proc = _run_job(cfg_path, work, tmp_path, "--no-prepare")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "[train] done: step 2" in out, out[-4000:]

    run = storage.list_files(f"{s3_bucket}/runs/s3job")
    assert any(f.startswith("checkpoint_0000002/") and f.endswith("train_state.pt") for f in run), (
        run
    )
    assert any(f.startswith("checkpoint_0000002/model/") for f in run), run
    outputs = storage.list_files(f"{s3_bucket}/out/s3job")
    assert any(f.startswith("tensorboard/events.out.tfevents") for f in outputs), outputs
    assert "model/modules.json" in outputs, outputs
    assert not (work / "runs").exists() and not any(tmp_path.glob("**/tfevents*"))
    # the base model came from s3:// through the local cache; the trained one loads from s3://
    assert any((tmp_path / "cache").rglob("config.json"))
    trained = SpladeEncoder.from_pretrained(f"{s3_bucket}/out/s3job/model")
    assert trained.encode_documents(["a cat on a mat"])[0]


TOPICS = {
    "cells": "cells divide by mitosis and meiosis in tissue",
    "heart": "the heart pumps blood through arteries and veins",
    "neuron": "neurons transmit electrical signals along axons",
    "insulin": "insulin regulates blood glucose in the liver",
    "virus": "a virus infects host cells and replicates",
    "bone": "bone marrow makes red and white blood cells",
}


def test_prepare_train_export_index_all_in_s3(
    s3, s3_bucket, tmp_path, splade_tiny, opensearch_url, index_name
):
    """The whole path with every path an s3:// URI: the BEIR source, prepare's output (shards,
    manifest, rejects; its miners read the work files by URI), the base model, checkpoints, the
    trained model, the export's zips, and the corpus the index job reads. jobs/train.py (prepare,
    then 2 workers) -> jobs/export.py -> jobs/index.py into an OpenSearch API (osmem). The local
    BEIR copy is deleted after the upload, and no run file lands on local disk."""
    from opensearchpy import OpenSearch

    from spladeray import storage

    corpus = [{"_id": f"d{i}", "title": k, "text": v} for i, (k, v) in enumerate(TOPICS.items())]
    corpus += [
        {"_id": f"x{i}", "text": f"{v} and more {k}"} for i, (k, v) in enumerate(TOPICS.items())
    ]
    queries = [{"_id": f"q{i}", "text": f"what about {k}"} for i, k in enumerate(TOPICS)]
    qrels = {"train": [(f"q{i}", f"d{i}", 1) for i in range(len(TOPICS))]}
    beir = write_beir(tmp_path / "beir", corpus, queries, qrels)
    storage.upload(beir, f"{s3_bucket}/beir/topics")
    shutil.rmtree(beir)  # from here on, the dataset exists only in S3
    model = build_tiny_mlm("bert", tiny_tokenizer(splade_tiny), tmp_path / "mlm")
    storage.upload(model, f"{s3_bucket}/models/tiny")
    shutil.rmtree(model)
    cfg = _train_cfg(s3_bucket, f"{s3_bucket}/out")
    cfg["prepare"] = {
        "output_dir": f"{s3_bucket}/prepared",
        "source": {"format": "beir", "path": f"{s3_bucket}/beir/topics", "split": "train"},
        "negatives": {"method": "bm25", "num_negatives": 1, "depth": 10},
        "teachers": {},
        "batch_size": 2,
        "progress": False,
    }
    cfg["train"]["batch_size"] = 2
    cfg["data"] = {"beir_dir": f"{s3_bucket}/beir/topics", "split": "train"}
    cfg["export"] = {"output_dir": f"{s3_bucket}/export"}
    cfg["index"] = {
        "backend": "opensearch",
        "name": index_name,
        "actors": 1,
        "batch_size": 4,
        "opensearch": {"hosts": [opensearch_url]},
    }
    work = tmp_path / "work"  # every job's cwd: a relative runs/ would land here
    work.mkdir()
    cfg_path = tmp_path / "pipeline.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    trained = f"{s3_bucket}/out/s3job/model"

    proc = _run_job(cfg_path, work, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "prepare: 6 rows" in out and "[train] done: step 2" in out, out[-4000:]
    prepared = storage.list_files(f"{s3_bucket}/prepared")
    assert {"_SUCCESS", "manifest.json", "rejects.jsonl"} <= set(prepared), prepared
    assert any(f.startswith("shards/") and f.endswith(".parquet") for f in prepared), prepared
    assert not any(f.startswith("_work") for f in prepared), prepared  # removed when done
    manifest = storage.read_json(f"{s3_bucket}/prepared/manifest.json")
    assert manifest["rows"] == 6 and manifest["output_dir"] == f"{s3_bucket}/prepared"
    runs = storage.list_files(f"{s3_bucket}/runs/s3job")
    assert any(f.startswith("checkpoint_0000002/") for f in runs), runs
    assert "modules.json" in storage.list_files(trained)

    model_flag = f"model.path={trained}"
    proc = _run_job(cfg_path, work, tmp_path, "--set", model_flag, job="export.py")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    exported = storage.list_files(f"{s3_bucket}/export")
    assert any(f.endswith(".zip") for f in exported), exported

    proc = _run_job(cfg_path, work, tmp_path, "--set", model_flag, job="index.py")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "indexed 12 into opensearch" in out and "rejected rows 0" in out, out[-4000:]
    client = OpenSearch(hosts=cfg["index"]["opensearch"]["hosts"])
    assert client.count(index=index_name)["count"] == len(corpus)

    assert not (work / "runs").exists(), sorted(p.name for p in (work / "runs").iterdir())
    assert not any(tmp_path.glob("**/tfevents*")) and not any(tmp_path.glob("**/*.zip"))


def _run_job(
    cfg_path, cwd, tmp_path, *flags: str, job: str = "train.py"
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "platform"),
        "SPLADERAY_CACHE_DIR": str(tmp_path / "cache"),
    }
    command = [sys.executable, str(ROOT / "jobs" / job), "--config", str(cfg_path), *flags]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=800)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("data_dir", "s3://no-such-bucket-spladeray/prepared", "no-such-bucket-spladeray"),
        ("data_dir", "{bucket}/prepraed", "prepraed"),
    ],
    ids=["missing-bucket", "typo-in-prefix"],
)
def test_a_bad_s3_uri_fails_before_any_work_naming_it(s3, s3_bucket, tmp_path, field, value, named):
    from spladeray import storage
    from spladeray.config import parse_config
    from spladeray.train import run_train

    storage.write_text(f"{s3_bucket}/prepared/_SUCCESS", "x\n")
    cfg = parse_config(
        _train_cfg(s3_bucket, str(tmp_path / "out"), **{field: value.format(bucket=s3_bucket)})
    )
    with pytest.raises(storage.StorageError, match=named) as err:
        run_train(cfg)  # raises before Ray starts: no cluster, no worker stack trace
    assert value.format(bucket=s3_bucket) in str(err.value)


def test_missing_credentials_are_named_before_any_work(s3, s3_bucket, tmp_path, monkeypatch):
    from spladeray import storage
    from spladeray.config import parse_config
    from spladeray.train import run_train

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    cfg = parse_config(_train_cfg(s3_bucket, str(tmp_path / "out")))
    with pytest.raises(storage.StorageError, match="no AWS credentials for s3://"):
        run_train(cfg)
