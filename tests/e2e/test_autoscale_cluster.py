"""The autoscaling endpoint across nodes (issue 32, item 2), on the multi-node cluster (a 0-CPU
head + 2 worker nodes of 2 CPUs, all on 127.0.0.1).

``serve deploy`` of the app with ``proxy_location: EveryNode`` (a proxy on every node: the
head's on ``http_options.port``, each worker node's on its own port, see
``LocalCluster.spawn_node``), ``min_replicas`` 1, ``max_replicas`` 2 and
``max_replicas_per_node`` 1, so that the second replica must go to the other worker node.

1. A bounded load (``HEAVY`` asyncio clients on the head's proxy) until the dashboard's Serve
   state (``/api/serve/applications/``, what ``serve status`` reads) shows 2 RUNNING replicas:
   they are on the two worker nodes, one each.
2. Each node's proxy answers what is sent to it (``/healthz`` and ``/encode``, 200).
3. The heavy load stops; one light client goes on, and the app scales back to 1 replica.
4. Under that light load, the worker node holding the replica is SIGKILLed (its raylet, its
   proxy, the replica: a spot reclaim). Serve starts the replacement on the surviving worker
   node, which then answers ``/encode``.

Through all of it the clients on the head's proxy see only 200, or 503 with ``Retry-After`` (the
proxy middleware answers 503 for the requests that were on the lost replica); none hangs
(client timeout ``CLIENT_TIMEOUT_S``). Afterwards a new worker node joins, so later tests of the
session still see a head + 2 workers, and Serve is shut down (tests/e2e/test_cluster.py deploys
its own). Bounds end a test that would otherwise wait for ever; no timing is asserted.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest
import yaml
from fixtures_cluster import free_ports

from helpers import ROOT

pytestmark = pytest.mark.timeout(900)

APP = "spladeray-spread"
HEAVY = 6  # clients under load: ~6 ongoing requests on one replica, 3x the target
TARGET = 2
CLIENT_TIMEOUT_S = 120.0
BOUND_S = 300.0  # each wait for a state (a replica starts, a lost node is noticed)


def _app_yaml(tmp_path, splade_tiny) -> dict:
    cfg = tmp_path / "app.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "run_name": "spread",
                "model": {"path": str(splade_tiny), "max_document_length": 64, "device": "cpu"},
                "index": {"backend": "local", "name": "tiny", "path": str(tmp_path / "index")},
                "serve": {
                    "min_replicas": 1,
                    "max_replicas": 2,
                    "max_replicas_per_node": 1,
                    "target_ongoing_requests": TARGET,
                    "max_ongoing_requests": 16,
                    "max_batch_size": 16,
                    "query_max_batch_size": 16,
                    "upscale_delay_s": 0.5,
                    "downscale_delay_s": 3.0,
                    "look_back_period_s": 2.0,
                    "metrics_interval_s": 0.5,
                    "health_check_period_s": 1.0,
                    "graceful_shutdown_timeout_s": 10.0,
                    "num_cpus": 1,
                    "num_gpus": 0,
                    "torch_threads": 1,
                },
            }
        )
    )
    return {
        "name": APP,
        "route_prefix": "/",
        "import_path": "spladeray.serving.app:app_builder",
        "runtime_env": {
            "env_vars": {
                "PYTHONPATH": str(ROOT / "platform"),
                "HF_HUB_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
            }
        },
        "args": {"config": str(cfg)},
    }


def _replicas(cluster) -> list[dict]:
    """The app's live replicas (state, node id), from the dashboard's Serve state."""
    details = cluster.api("/api/serve/applications/")
    app = details.get("applications", {}).get(APP)
    if not app:
        return []
    return [r for d in app["deployments"].values() for r in d["replicas"]]


def _running(cluster) -> list[str]:
    """Node ids of the RUNNING replicas."""
    return [r["node_id"] for r in _replicas(cluster) if r["state"] == "RUNNING"]


async def _poll(what: str, check, bound_s: float = BOUND_S) -> float:
    started = time.monotonic()
    while True:
        try:
            if await asyncio.to_thread(check):
                return time.monotonic() - started
        except OSError:  # the dashboard is slow to answer on a busy machine: ask again
            pass
        assert time.monotonic() - started < bound_s, f"{what} not seen within {bound_s:g}s"
        await asyncio.sleep(0.5)


async def _client(client, url: str, tag: str, stop: asyncio.Event, phase, results: list):
    i = 0
    while not stop.is_set():
        body = {"texts": [f"{tag} request {i}: ribosomes make proteins"]}
        i += 1
        at = phase()
        try:
            r = await client.post(f"{url}/encode", json=body)
            results.append((at, r.status_code, r.headers.get("retry-after"), r))
        except httpx.TimeoutException:
            results.append((at, "timeout", None, None))


async def _ask_proxy(client, base: str) -> tuple[int, int]:
    """(``/healthz`` status, ``/encode`` status) from one proxy. Serve starts a worker node's
    proxy once a replica is placed there, so a refused connection is asked again (bounded)."""
    started = time.monotonic()
    while True:
        try:
            h = await client.get(f"{base}/healthz")
            e = await client.post(f"{base}/encode", json={"texts": ["cells"], "kind": "query"})
            return h.status_code, e.status_code
        except httpx.ConnectError:
            assert time.monotonic() - started < BOUND_S, f"no proxy at {base}"
            await asyncio.sleep(0.5)


async def _scenario(cluster, url: str, results: list, seen: dict) -> None:
    phase = ["up"]
    current = lambda: phase[0]  # noqa: E731
    heavy_stop, light_stop = asyncio.Event(), asyncio.Event()
    limits = httpx.Limits(max_connections=HEAVY + 4)
    async with httpx.AsyncClient(limits=limits, timeout=CLIENT_TIMEOUT_S) as client:
        heavy = [
            asyncio.create_task(_client(client, url, f"h{k}", heavy_stop, current, results))
            for k in range(HEAVY)
        ]
        light = asyncio.create_task(_client(client, url, "l", light_stop, current, results))
        try:
            seen["up_s"] = await _poll("2 RUNNING replicas", lambda: len(_running(cluster)) == 2)
            seen["spread"] = _running(cluster)
            seen["spread_names"] = sorted(cluster.node_name(n) for n in seen["spread"])
            # every node's proxy answers what is sent to it
            for name, port in [("head", None), *cluster.proxy_ports.items()]:
                base = url if port is None else f"http://127.0.0.1:{port}"
                if name != "head" and cluster.node_procs[name].poll() is not None:
                    continue  # a node lost earlier in the session
                seen.setdefault("proxies", {})[name] = await _ask_proxy(client, base)

            phase[0] = "down"
            heavy_stop.set()
            await asyncio.gather(*heavy)
            seen["down_s"] = await _poll("1 replica", lambda: len(_replicas(cluster)) == 1)
            (seen["victim_node"],) = _running(cluster) or [None]
            assert seen["victim_node"], _replicas(cluster)

            phase[0] = "kill"
            victim = cluster.node_name(seen["victim_node"])
            seen["victim"] = victim
            cluster.kill_node(victim)
            t_kill = time.monotonic()
            survivors = {n["node_id"] for n in cluster.nodes()} - {seen["victim_node"]}

            def replaced() -> bool:
                nodes = _running(cluster)
                return len(nodes) == 1 and nodes[0] != seen["victim_node"] and nodes[0] in survivors

            await _poll("the replacement on the surviving node", replaced)
            seen["replaced_s"] = time.monotonic() - t_kill
            seen["replacement_node"] = _running(cluster)[0]
            seen["replacement"] = cluster.node_name(seen["replacement_node"])
            phase[0] = "after"
            n = len(results)
            while len(results) < n + 5:  # the light client is answered by the replacement
                await asyncio.sleep(0.1)
        finally:
            heavy_stop.set()
            light_stop.set()
            await asyncio.gather(*heavy, light, return_exceptions=True)


def test_replicas_spread_over_nodes_and_survive_a_node_loss(
    multinode_cluster, tmp_path, splade_tiny
):
    cluster = multinode_cluster
    (port,) = free_ports(1)
    serve_cfg = tmp_path / "serve.yaml"
    serve_cfg.write_text(
        yaml.safe_dump(
            {
                "proxy_location": "EveryNode",
                "http_options": {"host": "127.0.0.1", "port": port},
                "applications": [_app_yaml(tmp_path, splade_tiny)],
            }
        )
    )
    addr = ["--address", cluster.dashboard_url]
    cluster.cli("serve", "shutdown", "-y", *addr, timeout=120)  # another test's Serve settings
    proc = cluster.cli("serve", "deploy", str(serve_cfg), *addr, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    url = f"http://127.0.0.1:{port}"
    results: list = []
    seen: dict = {}
    try:

        def running() -> bool:
            apps = cluster.api("/api/serve/applications/").get("applications", {})
            status = apps.get(APP, {}).get("status")
            assert status not in {"DEPLOY_FAILED", "UNHEALTHY"}, apps[APP]
            return status == "RUNNING"

        seen["deploy_s"] = asyncio.run(_poll("the app RUNNING", running))
        started = time.monotonic()
        asyncio.run(_scenario(cluster, url, results, seen))
        elapsed = time.monotonic() - started
    finally:
        print(f"\n[autoscale-cluster] {seen}")
        cluster.cli("serve", "shutdown", "-y", *addr, timeout=120)
        # what an autoscaler does: a node joins in place of the lost one (the session's shape)
        if "victim" in seen:
            t_join = time.monotonic()
            cluster.add_worker_node()
            print(
                f"[autoscale-cluster] a new worker node joined in {time.monotonic() - t_join:.0f}s"
            )

    by_phase = Counter(f"{at} {status}" for at, status, *_ in results)
    print(
        f"\n[autoscale-cluster] load start -> 2 replicas {seen['up_s']:.1f}s on "
        f"{seen['spread_names']}; proxies (healthz, encode): "
        f"{seen['proxies']}; load stop -> 1 replica {seen['down_s']:.1f}s; killed "
        f"{seen['victim']} -> replacement RUNNING on {seen['replacement']} after "
        f"{seen['replaced_s']:.1f}s; {len(results)} requests in {elapsed:.0f}s: {dict(by_phase)}"
    )
    errors = Counter(r.text[:80] for _, status, _, r in results if status == 503)
    print(f"[autoscale-cluster] 503s by message: {dict(errors)}")
    head = cluster.head_node_id()
    assert len(set(seen["spread"])) == 2 and head not in seen["spread"]  # one per worker node
    assert seen["proxies"] and all(codes == (200, 200) for codes in seen["proxies"].values())
    assert len(seen["proxies"]) >= 3  # the head's and both worker nodes' proxies
    assert seen["replacement_node"] != seen["victim_node"] and seen["replacement_node"] != head
    statuses = Counter(str(status) for _, status, *_ in results)
    assert set(statuses) <= {"200", "503"}, by_phase  # no 500, no timeout
    for _, status, retry_after, response in results:
        if status == 503:
            assert retry_after and int(retry_after) >= 0, response.text
    assert {"up", "down", "kill", "after"} <= {at for at, *_ in results}
