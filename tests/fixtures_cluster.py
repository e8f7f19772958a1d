"""A real multi-node Ray cluster on 127.0.0.1: one head with 0 CPUs plus 2 worker nodes.

Each node is its own ``ray start --block`` process (a head, then two ``ray start --address``),
the way a cluster launcher starts them, so jobs arrive through ``ray job submit`` and Serve apps
through ``serve deploy`` exactly as on a real cluster (docs/cluster.md).

- The head has ``--num-cpus=0``: nothing that asks for a CPU can be scheduled on it. Train
  workers, Ray Data tasks and encoder replicas land on the worker nodes by construction.
- Several raylets on one host each need their own ports: node manager, object manager, metrics
  export, dashboard agent listen + gRPC, runtime-env agent and a worker port range.
- Token auth (Ray 2.60) is on, with a token of this session's own (``RAY_AUTH_MODE=token`` +
  ``RAY_AUTH_TOKEN``): it never reads nor writes ``~/.ray/auth_token``. Every node and every CLI
  call gets the same two variables through :attr:`LocalCluster.env`.
- One dedicated temp dir, with a ``--temp-dir`` of its own under it for each node: nodes sharing
  one session dir on one host share its ``runtime_resources`` too, and one node's runtime-env
  agent then replaces a job's unpacked working dir under the other node's running workers
  (``FileNotFoundError`` from ``os.getcwd()``). Teardown stops the processes of THIS cluster only
  (their command lines name that dir); a bare ``ray stop`` would stop every Ray on the machine.
- Node loss (tests/e2e/test_node_loss.py): :meth:`LocalCluster.kill_node` SIGKILLs one node's
  whole process tree at once (a spot reclaim), :meth:`LocalCluster.add_worker_node` joins a new
  worker node (what an autoscaler does). A session's later tests still see a head + 2 workers.
- ``PYTHONPATH`` is dropped from the nodes' environment, so a job imports the project's code only
  through what its own runtime env says (the way a user's job does on a real cluster).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import ROOT

BIN = Path(sys.executable).parent
WORKER_NODES = 2
CPUS_PER_WORKER_NODE = 2
OBJECT_STORE_BYTES = 100 * 1024 * 1024
TERMINAL_JOB_STATES = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass
class LocalCluster:
    """Handles on the running cluster: addresses, the CLI environment, the dashboard API."""

    temp_dir: str
    gcs_address: str
    dashboard_url: str
    env: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)
    # each node's Prometheus endpoint (``--metrics-export-port``), the head's first
    metrics_urls: list[str] = field(default_factory=list)
    # each node's ``ray start`` process by node name: "head", "node0", "node1", ...
    node_procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    # the worker port ranges given out so far (a node added later gets a disjoint one)
    port_ranges: list[tuple[int, int]] = field(default_factory=list)
    # each worker node's Serve proxy port by node name (see :meth:`spawn_node`)
    proxy_ports: dict[str, int] = field(default_factory=dict)

    @property
    def logs(self) -> Path:
        """Where each node's ``ray start`` output goes (``<node name>.log``)."""
        return Path(self.temp_dir) / "start-logs"

    def spawn_node(self, name: str, cmd: list[str]) -> subprocess.Popen:
        """Start one node's ``ray start --block`` process, its output in ``logs/<name>.log``.

        A worker node's Serve proxy (``proxy_location: EveryNode``) gets a port of its own,
        :attr:`proxy_ports` ``[name]`` (``RAY_SERVE_WORKER_PROXY_HTTP_PORT``): all nodes share
        127.0.0.1 here. The head's proxy binds ``http_options.port``."""
        env = self.env
        if name != "head":
            (self.proxy_ports[name],) = free_ports(1)
            env = {**env, "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(self.proxy_ports[name])}
        # cwd outside the checkout: Ray workers inherit it, and nothing may import from it by accident
        with open(self.logs / f"{name}.log", "w") as out:
            proc = subprocess.Popen(
                cmd, env=env, cwd=self.temp_dir, stdout=out, stderr=subprocess.STDOUT
            )
        self.procs.append(proc)
        self.node_procs[name] = proc
        return proc

    def add_worker_node(self, timeout: float = 180) -> str:
        """Join one more worker node (2 CPUs, its own ports and ``--temp-dir``), as an autoscaler
        replacing a lost node would; wait until the state API lists it alive. Returns its node id."""
        before = {n["node_id"] for n in self.nodes()}
        index = sum(1 for name in self.node_procs if name.startswith("node"))
        (metrics,) = free_ports(1)
        (range_,) = worker_port_ranges(1, exclude=self.port_ranges)
        self.port_ranges.append(range_)
        self.metrics_urls.append(f"http://127.0.0.1:{metrics}/metrics")
        proc = self.spawn_node(f"node{index}", worker_node_command(self, index, range_, metrics))
        new: list[str] = []

        def joined() -> bool:
            new[:] = [n["node_id"] for n in self.nodes() if n["node_id"] not in before]
            return bool(new)

        # only the new node's process: a killed node's ``ray start`` has exited, by design
        _wait_for(f"worker node {index}", joined, timeout, [proc], self.logs)
        return new[0]

    def node_name(self, node_id: str) -> str:
        """The name ("node0", ...) of the node with this Ray node id: the one whose processes
        name the id on their command line (its raylet gets ``--node_id``, its agents ``--node-id``)."""
        for name, proc in self.node_procs.items():
            tree = process_tree(proc.pid)
            if any(node_id in _cmdline(pid) for pid in tree):
                return name
        raise LookupError(f"no node of this cluster runs node id {node_id}")

    def kill_node(self, name: str) -> list[int]:
        """SIGKILL one node at once, as a spot reclaim does: its ``ray start`` process, its raylet
        and every other process below it (agents, Ray workers). Nothing gets to clean up.
        Returns the killed pids."""
        proc = self.node_procs[name]
        pids = process_tree(proc.pid)  # collected first: children re-parent once a parent dies
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        return pids

    @property
    def auth_headers(self) -> dict[str, str]:
        """What any HTTP client of the dashboard must send under token auth."""
        return {"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"}

    def cli(self, *args: str, timeout: float = 300, env: dict | None = None):
        """Run a CLI of the venv (``ray``, ``serve``) with the cluster's auth environment."""
        return subprocess.run(
            [str(BIN / args[0]), *args[1:]],
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def api(self, path: str, *, method: str = "GET", timeout: float = 30):
        """JSON from the dashboard's HTTP API (``/api/jobs/``, ``/api/v0/nodes``, ...)."""
        req = urllib.request.Request(
            self.dashboard_url + path, method=method, headers=self.auth_headers
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def head_node_id(self) -> str:
        """The head's node id, from the state API (``ray.nodes()`` says the same)."""
        (head,) = [n for n in self.nodes() if n["is_head_node"]]
        return head["node_id"]

    def nodes(self) -> list[dict]:
        """Alive nodes, as the state API (``ray list nodes``) lists them."""
        data = self.api("/api/v0/nodes?limit=100&detail=1")["data"]["result"]["result"]
        return [n for n in data if n["state"] == "ALIVE"]

    def actors(self, job_id: str) -> list[dict]:
        """Actors of one Ray job (hex job id), with the node each one ran on."""
        data = self.api("/api/v0/actors?limit=10000&detail=1")["data"]["result"]["result"]
        return [a for a in data if a["job_id"] == job_id]

    def submit(
        self,
        entrypoint: list[str],
        *,
        env_vars: dict[str, str] | None = None,
        working_dir: Path = ROOT,
    ) -> str:
        """``ray job submit --no-wait`` with a working dir and env vars; returns the submission id."""
        sid = f"spladeray-{uuid.uuid4().hex[:10]}"
        runtime_env = {"env_vars": env_vars or {}}
        proc = self.cli(
            "ray", "job", "submit", "--address", self.dashboard_url, "--submission-id", sid,
            "--working-dir", str(working_dir), "--runtime-env-json", json.dumps(runtime_env),
            "--no-wait", "--", *entrypoint,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return sid

    def wait_job(self, sid: str, timeout: float = 480) -> dict:
        """Poll ``GET /api/jobs/<id>`` until the job is terminal; returns its record."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            job = self.api(f"/api/jobs/{sid}")
            if job["status"] in TERMINAL_JOB_STATES:
                return job
            time.sleep(2)
        raise TimeoutError(f"job {sid} not finished after {timeout}s: {job}")

    def job_logs(self, sid: str) -> str:
        return self.api(f"/api/jobs/{sid}/logs")["logs"]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (from the kernel's ephemeral range)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def worker_port_ranges(
    count: int, size: int = 40, exclude: list[tuple[int, int]] = ()
) -> list[tuple[int, int]]:
    """``count`` disjoint ranges of free ports below the ephemeral range, one per node, none
    overlapping a range in ``exclude`` (given to running nodes, whose ports may be free yet)."""
    ranges: list[tuple[int, int]] = []
    low = 20000 + (os.getpid() % 50) * 200
    while len(ranges) < count and low < 32000:
        taken = any(low <= hi and lo <= low + size - 1 for lo, hi in exclude)
        if not taken and all(_port_is_free(p) for p in range(low, low + size)):
            ranges.append((low, low + size - 1))
        low += size
    assert len(ranges) == count, "no free worker port ranges below 32000"
    return ranges


def _node_ports(range_: tuple[int, int], metrics: int) -> list[str]:
    """The per-raylet ports that two raylets on one host must not share."""
    agent, agent_grpc, nm, om, rt = free_ports(5)
    return [
        f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}", f"--node-manager-port={nm}",
        f"--object-manager-port={om}", f"--runtime-env-agent-port={rt}",
        f"--min-worker-port={range_[0]}", f"--max-worker-port={range_[1]}",
    ]  # fmt: skip


def worker_node_command(
    cluster: LocalCluster, index: int, range_: tuple[int, int], metrics: int
) -> list[str]:
    """``ray start --address`` of worker node ``index`` (2 CPUs, ``--temp-dir=<temp>/node<i>``)."""
    return [
        str(BIN / "ray"), "start", f"--address={cluster.gcs_address}",
        f"--num-cpus={CPUS_PER_WORKER_NODE}", "--num-gpus=0",
        *_node_ports(range_, metrics), f"--temp-dir={cluster.temp_dir}/node{index}",
        "--block", "--node-ip-address=127.0.0.1", f"--object-store-memory={OBJECT_STORE_BYTES}",
        "--disable-usage-stats",
    ]  # fmt: skip


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants (from ``/proc/<pid>/stat``'s parent pid)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(proc.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cluster_env(token: str) -> dict[str, str]:
    """Environment of every node and CLI call: token auth with our token, offline, no PYTHONPATH."""
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        # Serve's proxies answer 503 + Retry-After, not 500, for a replica lost with its node
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "spladeray.serving.proxy:proxy_middlewares",
    }
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "PYTHONPATH"):
        env.pop(name, None)
    return env


def _log_tails(logs: Path, lines: int = 15) -> str:
    """The end of each ``ray start`` log (the temp dir is gone by the time a test fails)."""
    return "\n".join(
        f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        for log in sorted(logs.glob("*.log"))
    )


def _wait_for(what: str, check, timeout: float, procs: list[subprocess.Popen], logs: Path):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"a ray start process exited while waiting for {what}: {proc.args}\n"
                    + _log_tails(logs)
                )
        with contextlib.suppress(OSError, urllib.error.URLError, KeyError, ValueError):
            if check():
                return
        time.sleep(1)
    raise TimeoutError(f"{what} not ready after {timeout}s\n" + _log_tails(logs))


def start_cluster(
    temp_dir: str, worker_nodes: int = WORKER_NODES, head_cpus: int = 0
) -> LocalCluster:
    """Start the head (``head_cpus`` CPUs, dashboard on 127.0.0.1) and ``worker_nodes`` worker
    nodes; wait until all nodes are alive and the job server answers. bench/cluster.py starts a
    1-node cluster with it too (``worker_nodes=0``, CPUs on the head)."""
    token = uuid.uuid4().hex + uuid.uuid4().hex
    env = cluster_env(token)
    gcs, dash, client = free_ports(3)
    metrics = free_ports(1 + worker_nodes)
    ranges = worker_port_ranges(1 + worker_nodes)
    logs = Path(temp_dir) / "start-logs"
    logs.mkdir(parents=True)
    common = [
        "--block", "--node-ip-address=127.0.0.1", f"--object-store-memory={OBJECT_STORE_BYTES}", "--disable-usage-stats",
    ]  # fmt: skip
    head = [
        str(BIN / "ray"), "start", "--head", f"--port={gcs}", f"--num-cpus={head_cpus}", "--num-gpus=0",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}", *_node_ports(ranges[0], metrics[0]),
        f"--temp-dir={temp_dir}/head", *common,
    ]  # fmt: skip
    cluster = LocalCluster(
        temp_dir=temp_dir,
        gcs_address=f"127.0.0.1:{gcs}",
        dashboard_url=f"http://127.0.0.1:{dash}",
        env=env,
        metrics_urls=[f"http://127.0.0.1:{port}/metrics" for port in metrics],
        port_ranges=list(ranges),
    )
    cluster.spawn_node("head", head)
    _wait_for("GCS", lambda: not _port_is_free(gcs), 120, cluster.procs, logs)
    for i in range(worker_nodes):
        cluster.spawn_node(
            f"node{i}", worker_node_command(cluster, i, ranges[1 + i], metrics[1 + i])
        )
        # one node at a time: raylets starting together in one session dir race for the same
        # socket and log file names ("bind: Address already in use"); gentler on 2 cores too
        _wait_for(
            f"worker node {i}", lambda n=2 + i: len(cluster.nodes()) == n, 180, cluster.procs, logs
        )
    _wait_for("job server", lambda: cluster.api("/api/jobs/") is not None, 60, cluster.procs, logs)
    return cluster


def cluster_pids(temp_dir: str) -> list[int]:
    """Processes of the cluster started here: their command line names its temp dir."""
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


def stop_cluster(cluster: LocalCluster) -> None:
    """``ray stop`` for this cluster only: SIGTERM the ``ray start --block`` processes (each stops
    its node), then SIGTERM/SIGKILL anything left whose command line names our temp dir."""
    for proc in reversed(cluster.procs):  # workers first, the head last
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    deadline = time.time() + 15  # then the sweep below stops whatever still runs
    for proc in reversed(cluster.procs):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.time()))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = cluster_pids(cluster.temp_dir)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.time() + 10
        while pids and time.time() < deadline:
            time.sleep(0.5)
            pids = cluster_pids(cluster.temp_dir)
        if not pids:
            break
    for proc in cluster.procs:
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="session")
def multinode_cluster():
    """A head (0 CPUs, dashboard on) + 2 worker nodes on 127.0.0.1, token auth on, for the session."""
    # short path: Ray's unix sockets live under it (108-byte limit)
    temp_dir = tempfile.mkdtemp(prefix="src", dir="/tmp")
    cluster = None
    try:
        cluster = start_cluster(temp_dir)
        yield cluster
    finally:
        if cluster is not None:
            stop_cluster(cluster)
        else:
            stop_cluster(LocalCluster(temp_dir, "", "", {}))
        shutil.rmtree(temp_dir, ignore_errors=True)
