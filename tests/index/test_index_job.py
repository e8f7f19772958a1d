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


def test_backend_lost_mid_job_stops_then_resume_completes(
    ray_cluster, splade_tiny, tmp_path, osmem
):
    """The backend refuses connections after 3 bulk writes: the job stops with a clear message
    and counts only confirmed documents; --resume asks the backend, skips what it holds and
    ends with exactly the corpus."""
    from faultproxy import FaultProxy
    from opensearchpy import OpenSearch

    from spladeray.index.bulk import IndexingStopped

    (tmp_path / "corpus.jsonl").write_text(
        "".join(
            json.dumps({"_id": f"d{i:02d}", "text": f"document {i} about cells"}) + "\n"
            for i in range(40)
        )
    )
    clone = osmem.clone()
    proxy = FaultProxy(clone.url)
    direct = OpenSearch(hosts=[clone.url])
    cfg = parse_config(
        {
            "model": {"path": str(splade_tiny), "max_document_length": 32, "device": "cpu"},
            "data": {"beir_dir": str(tmp_path)},
            "index": {
                "backend": "opensearch",
                "name": "job",
                "batch_size": 4,
                "actors": 1,
                "opensearch": {
                    "hosts": [proxy.url],
                    "username_env": None,
                    "password_env": None,
                },
            },
        }
    )
    try:
        proxy.set("refuse", after_bulk=3)  # one bulk per batch of 4: 12 documents get in
        with pytest.raises(IndexingStopped, match="unavailable.*--resume") as info:
            run_index(cfg, show_progress=False)
        direct.indices.refresh(index="job")
        held = direct.count(index="job")["count"]
        assert held == 12 == len(proxy.forwarded_ids)
        assert info.value.summary.indexed <= held  # never a phantom success (in-flight batches)
        assert f"{info.value.summary.indexed} documents were confirmed" in str(info.value)

        proxy.set("pass")  # the backend is back, with its data
        summary = run_index(cfg, resume=True, show_progress=False)
        assert summary.skipped == 12 and summary.indexed == 28, summary
        assert summary.failed == 0 and summary.count == 40
        assert "skipped 12 already indexed" in summary.report()
        hits = direct.search(index="job", body={"size": 100, "_source": False})["hits"]["hits"]
        assert sorted(h["_id"] for h in hits) == [f"d{i:02d}" for i in range(40)]
    finally:
        proxy.close()
        clone.close()
