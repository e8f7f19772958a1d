"""Evaluation reports in object storage: ``evaluate.output_dir`` as an ``s3://`` URI (moto).

The reports and run files are staged locally, uploaded, and ``results.json`` is written last; the
files and their content are those of a local evaluation. A bucket that does not exist fails before
any evaluation starts, naming the URI.
"""

from __future__ import annotations

import json

import pytest

from spladeray import storage
from spladeray.config import parse_config
from spladeray.eval import run_evaluation
from spladeray.eval.report import results_markdown

from helpers import write_beir

TIMING_KEYS = {"created", "latency_ms", "docs_per_s", "index_s"}


@pytest.fixture(scope="module")
def tiny_beir(tmp_path_factory):
    topics = {
        "virus": ["the virus infects cells", "vaccines train the immune system against a virus"],
        "heart": ["the heart pumps blood", "blood pressure and the heart"],
        "bone": ["bone density falls with age", "calcium builds bone"],
    }
    corpus, qrels = [], []
    for topic, texts in topics.items():
        for i, text in enumerate(texts):
            corpus.append({"_id": f"{topic}-{i}", "title": topic, "text": text})
            qrels.append((f"q-{topic}", f"{topic}-{i}", 1))
    queries = [{"_id": f"q-{t}", "text": f"what about the {t}"} for t in topics]
    return write_beir(tmp_path_factory.mktemp("beir") / "tiny", corpus, queries, {"test": qrels})


def _config(splade_tiny, beir_dir, output_dir: str):
    return parse_config(
        {
            "run_name": "uri",
            "model": {"path": str(splade_tiny), "device": "cpu"},
            "evaluate": {
                "output_dir": output_dir,
                "datasets": [{"name": "tiny", "beir_dir": str(beir_dir), "split": "test"}],
                "systems": [{"kind": "bm25"}],
                "latency_queries": 2,
            },
        }
    )


def _without_timing(obj):
    """The JSON with the wall-clock figures (which differ from run to run) left out."""
    if isinstance(obj, dict):
        return {k: _without_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_without_timing(v) for v in obj]
    return obj


def _evaluate(cfg):
    return run_evaluation(cfg, echo=False, show_progress=False)


def test_reports_in_s3_match_a_local_evaluation(
    s3_bucket, splade_tiny, tiny_beir, tmp_path, staging_root
):
    local_dir = tmp_path / "local"
    local = _evaluate(_config(splade_tiny, tiny_beir, str(local_dir)))
    uri = f"{s3_bucket}/eval"
    remote = _evaluate(_config(splade_tiny, tiny_beir, uri))

    files = ["quality_vs_dims.png", "results.json", "results.md", "runs/tiny/bm25.trec"]
    assert storage.list_files(local_dir) == storage.list_files(uri) == files
    assert not list(staging_root.iterdir())  # the staging directory is gone

    # local output: local paths as before; remote output: the URIs
    assert local.paths == {
        "json": str(local_dir / "results.json"),
        "markdown": str(local_dir / "results.md"),
        "chart": str(local_dir / "quality_vs_dims.png"),
        "runs": str(local_dir / "runs"),
    }
    assert remote.paths == {
        "json": f"{uri}/results.json",
        "markdown": f"{uri}/results.md",
        "chart": f"{uri}/quality_vs_dims.png",
        "runs": f"{uri}/runs",
    }

    remote_json = storage.read_json(remote.paths["json"])
    assert _without_timing(remote_json) == _without_timing(remote.to_json())
    assert _without_timing(remote_json) == _without_timing(
        json.loads((local_dir / "results.json").read_text())
    )
    assert remote_json["average"]["bm25"]["metrics"]["nDCG@10"] > 0.5
    assert storage.read_text(remote.paths["markdown"]) == results_markdown(remote)
    assert (
        storage.read_bytes(f"{uri}/runs/tiny/bm25.trec")
        == (local_dir / "runs" / "tiny" / "bm25.trec").read_bytes()
    )
    assert storage.read_bytes(remote.paths["chart"])[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_bucket_fails_before_any_work(s3, splade_tiny, tiny_beir, monkeypatch):
    import spladeray.eval.runner as runner

    def no_work(*args, **kwargs):
        raise AssertionError("evaluation started before the output URI was checked")

    monkeypatch.setattr(runner, "evaluate_systems", no_work)
    uri = "s3://spladeray-no-such-bucket/eval"
    with pytest.raises(storage.StorageError, match=f"bucket 'spladeray-no-such-bucket' of {uri}"):
        _evaluate(_config(splade_tiny, tiny_beir, uri))
