"""The cluster user's path on a real multi-node Ray cluster (head + 2 worker nodes, 127.0.0.1).

``ray job submit --working-dir`` of a probe and of jobs/train.py, then ``serve deploy`` of the
Serve app, all through the CLIs and the dashboard's HTTP API under Ray 2.60 token auth
(docs/cluster.md). The head has 0 CPUs, so "nothing ran on the head" is a property of the
cluster, checked through node ids, not a guess about scheduling.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from fixtures_cluster import free_ports

from helpers import ROOT, tiny_train_section, write_prepared

pytestmark = pytest.mark.timeout(900)

# What a job needs so that it and its Ray workers import the project's code from the uploaded
# working dir: PYTHONPATH relative to that dir (each worker's cwd), ahead of any installed copy.
JOB_ENV = {"PYTHONPATH": "platform", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

PROBE = """
import json, os, ray, spladeray
ray.init()
head = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"]]

@ray.remote(num_cpus=1)
def where():
    import spladeray
    return {"node": ray.get_runtime_context().get_node_id(), "cwd": os.getcwd(),
            "spladeray": spladeray.__file__}

print("PROBE " + json.dumps({"head": head, "cwd": os.getcwd(), "spladeray": spladeray.__file__,
                             "tasks": ray.get([where.remote() for _ in range(4)])}))
"""


def _probe_output(logs: str) -> dict:
    (line,) = [ln for ln in logs.splitlines() if ln.startswith("PROBE ")]
    return json.loads(line[len("PROBE ") :])


def _succeeded(cluster, sid: str) -> dict:
    """The job's record once terminal; it must have SUCCEEDED, also in ``GET /api/jobs/``."""
    job = cluster.wait_job(sid)
    assert job["status"] == "SUCCEEDED", (job, cluster.job_logs(sid)[-4000:])
    listed = {j["submission_id"]: j["status"] for j in cluster.api("/api/jobs/")}
    assert listed[sid] == "SUCCEEDED"
    return job


def test_submitted_job_runs_on_worker_nodes_with_the_uploaded_code(multinode_cluster):
    cluster = multinode_cluster
    sid = cluster.submit(["python", "-c", PROBE], env_vars=JOB_ENV)
    _succeeded(cluster, sid)
    out = _probe_output(cluster.job_logs(sid))

    head = cluster.head_node_id()
    assert out["head"] == [head]  # ray.nodes() in the job agrees with the state API
    workers = {n["node_id"] for n in cluster.nodes()} - {head}
    assert len(workers) == 2
    assert {t["node"] for t in out["tasks"]} <= workers  # the head has 0 CPUs

    # the driver and every task import spladeray from the uploaded working dir (not the
    # checkout the venv was installed from): PYTHONPATH=platform, resolved in that dir
    for proc in [out, *out["tasks"]]:
        module = Path(proc["spladeray"])
        assert module == Path(proc["cwd"]) / "platform" / "spladeray" / "__init__.py", proc
        assert module.is_relative_to(cluster.temp_dir), proc
        assert not module.is_relative_to(ROOT), proc


def test_train_job_runs_on_worker_nodes(multinode_cluster, tmp_path, splade_tiny):

    from helpers import build_tiny_mlm, tiny_tokenizer

    cluster = multinode_cluster
    model = build_tiny_mlm("bert", tiny_tokenizer(splade_tiny), tmp_path / "mlm")
    data = write_prepared(tmp_path / "prepared", n_rows=16, n_neg=1)
    cfg_path = tmp_path / "train.yaml"
    train = tiny_train_section(tmp_path / "out", data)
    # The workers hold after the last step until the test has seen its metric on a node's
    # Prometheus endpoint: Ray exports a worker's metrics every few seconds, so a worker that
    # exits right after its last step can take that step's value with it (this failed CI under
    # load). Held, the only wait is for the export, and the job ends when the test says.
    release = tmp_path / "release"
    train["debug"] = {"hold_after_step": 2, "hold_file": str(release)}
    cfg_path.write_text(
        yaml.safe_dump({"run_name": "job", "model": {"path": str(model)}, "train": train})
    )

    sid = cluster.submit(["python", "jobs/train.py", "--config", str(cfg_path)], env_vars=JOB_ENV)
    try:
        # the per-step training metrics reached a node's Prometheus endpoint (ray.util.metrics)
        step = _scrape(cluster, "ray_spladeray_train_step{", 'run="job"', timeout=400)
    finally:
        release.touch()
    assert step and float(step.rsplit(" ", 1)[1]) == 2.0, step
    job = _succeeded(cluster, sid)
    assert "[train] done: step 2" in cluster.job_logs(sid)
    assert (tmp_path / "out" / "job" / "model" / "modules.json").is_file()

    head = cluster.head_node_id()
    train_workers = [a for a in cluster.actors(job["job_id"]) if "TrainWorker" in a["class_name"]]
    assert len(train_workers) == 2, [a["class_name"] for a in cluster.actors(job["job_id"])]
    assert all(a["node_id"] != head for a in train_workers)


def _scrape(cluster, *needles: str, timeout: float = 120.0) -> str | None:
    """The first metrics line holding every needle, polled on every node until ``timeout``
    (each node's agent exports what its processes recorded every few seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for url in cluster.metrics_urls:
            try:
                with urllib.request.urlopen(url, timeout=10) as resp:
                    text = resp.read().decode()
            except OSError:
                continue
            for line in text.splitlines():
                if all(n in line for n in needles):
                    return line
        time.sleep(2)
    return None


def _serve_status(cluster) -> dict:
    proc = cluster.cli("serve", "status", "--address", cluster.dashboard_url, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return yaml.safe_load(proc.stdout)


def _http_json(url: str, body: dict | None = None, timeout: float = 60):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, json.loads(resp.read())


def test_serve_deploy_under_token_auth(multinode_cluster, tmp_path, splade_tiny):
    """``serve deploy`` + ``serve status`` + an HTTP request, against the multi-node cluster.

    The app imports the installed package (``spladeray.serving.app:app_builder``), not the
    repo-root ``serve.app`` module: ``serve deploy`` uploads no working dir. Our nodes run
    without PYTHONPATH, so the app's runtime env points at this checkout's ``platform/``.
    """
    cluster = multinode_cluster
    (port,) = free_ports(1)
    app_cfg = tmp_path / "app.yaml"
    app_cfg.write_text(
        yaml.safe_dump(
            {
                "run_name": "cluster-serve",
                "model": {"path": str(splade_tiny), "max_query_length": 32,
                          "max_document_length": 64, "device": "cpu"},
                "index": {"backend": "local", "name": "tiny", "path": str(tmp_path / "index")},
                "serve": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 1, "num_gpus": 0},
            }
        )
    )  # fmt: skip
    serve_cfg = tmp_path / "serve.yaml"
    serve_cfg.write_text(
        yaml.safe_dump(
            {
                # EveryNode would start one proxy per node, all on the same host and port here
                "proxy_location": "HeadOnly",
                "http_options": {"host": "127.0.0.1", "port": port},
                "applications": [
                    {
                        "name": "spladeray",
                        "route_prefix": "/",
                        "import_path": "spladeray.serving.app:app_builder",
                        "runtime_env": {
                            "env_vars": {
                                "PYTHONPATH": str(ROOT / "platform"),
                                "HF_HUB_OFFLINE": "1",
                                "TOKENIZERS_PARALLELISM": "false",
                            }
                        },
                        "args": {"config": str(app_cfg)},
                    }
                ],
            }
        )
    )
    deploy = ["serve", "deploy", str(serve_cfg), "--address", cluster.dashboard_url]

    # The failure of the earlier note: without RAY_AUTH_MODE=token the Serve CLI sends no
    # Authorization header, even with RAY_AUTH_TOKEN set (docs/cluster.md, "Token auth").
    no_mode = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_MODE"}
    refused = cluster.cli(*deploy, env=no_mode, timeout=120)
    assert refused.returncode != 0
    assert "Missing authentication token" in refused.stdout + refused.stderr

    proc = cluster.cli(*deploy, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    deadline = time.time() + 300
    status = _serve_status(cluster)
    while status["applications"]["spladeray"]["status"] != "RUNNING":
        assert status["applications"]["spladeray"]["status"] in {"NOT_STARTED", "DEPLOYING"}, status
        assert time.time() < deadline, status
        time.sleep(3)
        status = _serve_status(cluster)

    code, health = _http_json(f"http://127.0.0.1:{port}/healthz")
    assert code == 200 and health["status"] == "ok", health
    code, body = _http_json(
        f"http://127.0.0.1:{port}/encode", {"texts": ["sparse retrieval"], "kind": "query"}
    )
    assert code == 200 and len(body["vectors"]) == 1 and body["vectors"][0], body

    # the encoder replica needs a CPU, so it runs on a worker node
    head = cluster.head_node_id()
    replicas = [
        a for a in cluster.api("/api/v0/actors?limit=10000&detail=1")["data"]["result"]["result"]
        if a["state"] == "ALIVE" and "ServeReplica:spladeray:Encoder" in a["class_name"]
    ]  # fmt: skip
    assert replicas and all(a["node_id"] != head for a in replicas), replicas
