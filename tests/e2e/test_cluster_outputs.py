"""Where a submitted job's outputs go, on the multi-node cluster (head with 0 CPUs + 2 workers).

Under ``ray job submit --working-dir`` the job runs in Ray's unpacked copy of the checkout, and
the default config's ``${SPLADERAY_RUNS:-runs}`` resolves inside it (issue 34: a green job whose
model Ray later deletes). The job must refuse before any work and say what to set; with
``SPLADERAY_RUNS=<absolute path>`` its outputs land there (docs/cluster.md, "Where outputs go").
"""

from __future__ import annotations

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
    """The cheapest job that writes: prepare, on the default config shrunk by ``--set`` to a
    12-document BEIR set and the BM25 teacher (no model), with ``SPLADERAY_RUNS=<tmp>/runs``."""
    cluster = multinode_cluster
    docs = [f"{w} {w}s are {w}-like things" for w in ("cat", "dog", "fish", "bird", "tree", "rock")]
    corpus = [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(docs * 2)]
    queries = [{"_id": f"q{i}", "text": t.split()[0]} for i, t in enumerate(docs)]
    beir = write_beir(
        tmp_path / "beir", corpus, queries, {"train": [(f"q{i}", f"d{i}", 1) for i in range(6)]}
    )
    runs = tmp_path / "runs"
    overrides = [
        f"prepare.source.path={beir}",
        "prepare.source.holdout=null",
        "prepare.teachers={bm25: {kind: bm25}}",
        "prepare.negatives.num_negatives=2",
        "prepare.negatives.depth=10",
        "prepare.progress=false",
    ]
    sid = cluster.submit(
        ["python", "jobs/prepare.py", *(a for o in overrides for a in ("--set", o))],
        env_vars={**JOB_ENV, "SPLADERAY_RUNS": str(runs)},
    )
    job = cluster.wait_job(sid, timeout=400)
    logs = cluster.job_logs(sid)
    assert job["status"] == "SUCCEEDED", (job, logs[-3000:])
    prepared = runs / "demo" / "prepared"
    assert (prepared / "_SUCCESS").is_file()
    assert list((prepared / "shards").glob("*.parquet"))
    assert f"[prepare] wrote: prepared data {prepared}\n" in logs
    assert not _copies_with_runs(cluster)
