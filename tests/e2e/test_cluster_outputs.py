"""Where a submitted job's outputs go, on the multi-node cluster (head with 0 CPUs + 2 workers).

Under ``ray job submit --working-dir`` the job runs in Ray's unpacked copy of the checkout, and
the default config's ``${SPLADERAY_RUNS:-runs}`` resolves inside it (issue 34: a green job whose
model Ray later deletes). The job must refuse before any work and say what to set; with
``SPLADERAY_RUNS=<absolute path>`` its outputs land there (docs/cluster.md, "Where outputs go").
About 30 s each under ``ray job submit`` (the upload and the driver's start), plus the cluster's
start-up when these run alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import write_beir

pytestmark = pytest.mark.timeout(600)

# As tests/e2e/test_cluster.py: the job and its workers import the uploaded code. An empty
# SPLADERAY_RUNS counts as unset (${VAR:-default}), whatever the nodes inherited.
JOB_ENV = {
    "PYTHONPATH": "platform",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "SPLADERAY_RUNS": "",
}


def _copies_with_runs(cluster) -> list[Path]:
    """``runs/`` folders in any node's unpacked working dirs (the checkout's own ``runs/`` is
    git-ignored, so Ray's upload leaves it out: one there was written by a job)."""
    return sorted(
        Path(cluster.temp_dir).glob("*/session_*/runtime_resources/working_dir_files/*/runs")
    )


def test_default_config_under_job_submit_refuses_before_any_work(multinode_cluster):
    cluster = multinode_cluster
    sid = cluster.submit(["python", "jobs/train.py"], env_vars=JOB_ENV)
    job = cluster.wait_job(sid, timeout=300)
    logs = cluster.job_logs(sid)
    assert job["status"] == "FAILED", (job, logs[-3000:])
    assert "error: refusing to start: this job runs under `ray job submit`" in logs, logs[-3000:]
    for line in ("prepare.output_dir: prepared data -> ", "train.output_dir: model -> "):
        assert line in logs
    assert "/runtime_resources/working_dir_files/_ray_pkg_" in logs
    assert '{"env_vars": {"SPLADERAY_RUNS": "s3://my-bucket/spladeray/runs"}}' in logs
    # before any work: the driver never joined Ray (no job id, no actor) and wrote nothing
    assert "[ray]" not in logs and "[train] done" not in logs
    assert not job.get("job_id") or not cluster.actors(job["job_id"])
    assert not _copies_with_runs(cluster)


def test_runs_root_set_to_an_absolute_path_gets_the_outputs(multinode_cluster, tmp_path):
    """The cheapest job that writes: evaluate, on the default config shrunk by ``--set`` to BM25
    on a 12-document BEIR set, with ``SPLADERAY_RUNS=<tmp>/runs`` (jobs/prepare.py on the same
    data took 3x as long here: Ray Data's start-up on the cluster)."""
    cluster = multinode_cluster
    docs = [f"{w} {w}s are {w}-like things" for w in ("cat", "dog", "fish", "bird", "tree", "rock")]
    corpus = [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(docs * 2)]
    queries = [{"_id": f"q{i}", "text": t.split()[0]} for i, t in enumerate(docs)]
    beir = write_beir(
        tmp_path / "beir", corpus, queries, {"train": [(f"q{i}", f"d{i}", 1) for i in range(6)]}
    )
    runs = tmp_path / "runs"
    overrides = [
        f"data.beir_dir={beir}",
        "data.split=train",
        "data.corpus_limit=null",
        "evaluate.systems=[{name: bm25, kind: bm25}]",
        "evaluate.latency_queries=0",
        "evaluate.chart=false",
    ]
    sid = cluster.submit(
        ["python", "jobs/evaluate.py", *(a for o in overrides for a in ("--set", o))],
        env_vars={**JOB_ENV, "SPLADERAY_RUNS": str(runs)},
    )
    job = cluster.wait_job(sid, timeout=300)
    logs = cluster.job_logs(sid)
    assert job["status"] == "SUCCEEDED", (job, logs[-3000:])
    reports = runs / "demo" / "eval"
    results = json.loads((reports / "results.json").read_text())
    assert list(results["average"]) == ["bm25"]  # the one system the --set asked for
    assert 0 < results["average"]["bm25"]["metrics"]["nDCG@10"] <= 1
    assert (reports / "results.md").is_file()
    assert f"[evaluate] wrote: reports {reports}\n" in logs
    assert not _copies_with_runs(cluster)
