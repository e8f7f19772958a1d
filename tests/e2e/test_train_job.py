"""``ray job submit`` of jobs/train.py against a ``ray start --head`` cluster started here."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, write_prepared

pytestmark = pytest.mark.timeout(600)


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def test_ray_job_submit_train(tmp_path, splade_tiny):
    from helpers import build_tiny_mlm, tiny_tokenizer

    model = build_tiny_mlm("bert", tiny_tokenizer(splade_tiny), tmp_path / "mlm")
    data = write_prepared(tmp_path / "prepared", n_rows=16, n_neg=1)
    cfg_path = tmp_path / "job.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "run_name": "job",
                "model": {"path": str(model)},
                "train": {
                    "output_dir": str(tmp_path / "out"),
                    "data_dir": str(data),
                    "num_workers": 1,
                    "batch_size": 4,
                    "num_negatives": 1,
                    "max_steps": 2,
                    "max_query_length": 16,
                    "max_document_length": 24,
                    "log_every_steps": 1,
                    "tensorboard": False,
                    "checkpoint": {"every_steps": 2},
                },
            }
        )
    )
    gcs, dash, client, agent, metrics, nm, om, rt = _free_ports(8)
    low = 20000 + (os.getpid() % 200) * 100
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # token auth on, with a token of our own: independent of any ~/.ray/auth_token
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex,
    }
    env.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")
    ray_bin = str(bin_dir / "ray")
    start = [
        ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
        "--num-cpus=3", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
        f"--node-manager-port={nm}", f"--object-manager-port={om}",
        f"--runtime-env-agent-port={rt}", f"--min-worker-port={low}",
        f"--max-worker-port={low + 99}", f"--temp-dir={temp_dir}",
        "--object-store-memory=200000000", "--disable-usage-stats",
    ]  # fmt: skip
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=180)
    try:
        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 60
        while time.time() < deadline:  # the job server comes up shortly after the head
            ok = subprocess.run(
                [ray_bin, "job", "list", "--address", address],
                env=env, capture_output=True, timeout=60,
            )  # fmt: skip
            if ok.returncode == 0:
                break
            time.sleep(2)
        proc = subprocess.run(
            [
                ray_bin, "job", "submit", "--address", address, "--working-dir", str(ROOT),
                "--", "python", "jobs/train.py", "--config", str(cfg_path),
            ],
            env=env, capture_output=True, text=True, timeout=480,
        )  # fmt: skip
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:]
        assert "succeeded" in out, out[-4000:]
        assert "[train] done: step 2" in out, out[-4000:]
        assert (tmp_path / "out" / "job" / "model" / "modules.json").is_file()
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _cluster_pids(temp_dir: str) -> list[int]:
    """Processes of the cluster this test started: their command line names its temp dir.

    (``ray stop`` would stop every Ray on the machine, other people's included.)"""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if temp_dir in cmdline:
            pids.append(int(proc.name))
    return pids


def _stop_cluster(temp_dir: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _cluster_pids(temp_dir)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.time() + 10
        while pids and time.time() < deadline:
            time.sleep(0.5)
            pids = _cluster_pids(temp_dir)
        if not pids:
            return
