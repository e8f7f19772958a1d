"""jobs/index.py --rollout / --rollback end to end: Ray Data indexing into osmem, alias swap."""

from __future__ import annotations

import json

import pytest
from opensearchpy import OpenSearch

from spladeray.config import parse_config
from spladeray.index.opensearch import OpenSearchIndex
from spladeray.index.rollout_job import run_rollback, run_rollout


def _cfg(url, beir, model, top_k=None):
    return parse_config(
        {
            "model": {"path": str(model), "max_document_length": 64, "top_k": top_k},
            "data": {"beir_dir": str(beir)},
            "index": {
                "backend": "opensearch",
                "name": "docs",
                "batch_size": 4,
                "actors": 1,
                "opensearch": {"hosts": [url], "username_env": None, "password_env": None},
            },
        }
    )


def test_rollout_swaps_alias_and_rolls_back(ray_cluster, osmem, splade_tiny, tmp_path):
    beir = tmp_path / "beir"
    beir.mkdir()
    rows = [{"_id": f"d{i}", "text": f"cells and proteins number {i}"} for i in range(10)]
    (beir / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    clone = osmem.clone()
    try:
        client = OpenSearch(hosts=[clone.url])
        index = OpenSearchIndex(client)
        first = run_rollout(_cfg(clone.url, beir, splade_tiny))
        assert first["swapped"] and first["indexed"] == first["expected"] == 10
        assert index.alias_targets("docs") == [first["index"]]
        # same model again: nothing to rebuild, the alias stays
        assert not run_rollout(_cfg(clone.url, beir, splade_tiny))["swapped"]
        # a different encoding (top_k) is a different model hash: new index, alias moves
        second = run_rollout(_cfg(clone.url, beir, splade_tiny, top_k=8))
        assert second["swapped"] and second["index"] != first["index"]
        assert second["previous"] == [first["index"]]
        assert index.alias_targets("docs") == [second["index"]]
        assert client.count(index="docs")["count"] == 10
        back = run_rollback(_cfg(clone.url, beir, splade_tiny))
        assert back["index"] == first["index"]
        assert index.alias_targets("docs") == [first["index"]]
    finally:
        clone.close()


def test_rollout_needs_opensearch(splade_tiny, tmp_path):
    cfg = parse_config({"model": {"path": str(splade_tiny)}, "data": {"beir_dir": str(tmp_path)}})
    with pytest.raises(ValueError, match="backend: opensearch"):
        run_rollout(cfg)
