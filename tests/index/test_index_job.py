"""The Ray Data bulk indexing job: actor pool writes, summary, resume, rejects."""

from __future__ import annotations

import json

import pytest

from spladeray.config import parse_config
from spladeray.index.bulk import run_index
from spladeray.index.local import LocalIndex


def test_index_job_writes_resumes_and_reports(ray_cluster, splade_tiny, tmp_path):
    beir = tmp_path / "beir"
    beir.mkdir()
    rows = [
        json.dumps({"_id": f"d{i}", "title": f"T{i}", "text": f"document {i} about cells"})
        for i in range(12)
    ]
    rows[3] = "{broken json"
    rows[5] = json.dumps({"_id": "d5", "text": ""})
    (beir / "corpus.jsonl").write_text("\n".join(rows) + "\n")
    cfg = parse_config(
        {
            "model": {"path": str(splade_tiny), "max_document_length": 64, "device": "cpu"},
            "data": {"beir_dir": str(beir)},
            "index": {"name": "job", "path": str(tmp_path / "idx"), "batch_size": 4, "actors": 2},
        }
    )
    # half the corpus is already there (as from an interrupted run): --resume skips it
    LocalIndex(tmp_path / "idx").add("job", ["d0", "d1", "d2", "d4"], [{"x": 1.0}] * 4)
    summary = run_index(cfg, resume=True, show_progress=False)
    assert summary.skipped == 4 and summary.indexed == 6, summary
    assert summary.rejected == 2 and summary.failed == 0
    assert {r.split(":")[0] for r in summary.rejects} == {"invalid JSON", "d5"}
    index = LocalIndex(tmp_path / "idx")
    assert index.count("job") == 10 and index.get("job", "d0") == {"x": 1.0}  # not re-encoded
    assert index.get("job", "d11") and index.get("job", "d11") != {"x": 1.0}


def test_index_job_fails_fast_when_the_cluster_is_too_small(ray_cluster, splade_tiny, tmp_path):
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "a", "text": "x"}) + "\n")
    cfg = parse_config(
        {
            "model": {"path": str(splade_tiny)},
            "data": {"beir_dir": str(tmp_path)},
            "index": {"path": str(tmp_path / "idx"), "actors": 1000},
        }
    )
    with pytest.raises(RuntimeError, match="1000 CPUs but the cluster has"):
        run_index(cfg, show_progress=False)
