"""The autoscaling endpoint observed scaling (issue 32): up under load, down after it, and to zero.

**Up, then down** (one node, the session's Ray cluster): the app runs with ``min_replicas`` 1,
``max_replicas`` 2 and ``target_ongoing_requests`` 2, its delays and the autoscaler's averaging
window shortened by config. A bounded asyncio (httpx) load on 127.0.0.1 (``HEAVY`` clients,
each sending its next request when the last is answered: about ``HEAVY`` ongoing requests on
one replica, above the target) runs until ``serve.status()`` shows 2 RUNNING replicas, bounded
by ``UP_BOUND_S``. Then the heavy load stops; one light client (about 1 ongoing request for 2
replicas, below the target) keeps sending until ``serve.status()`` shows 1 replica again,
bounded by ``downscale_delay_s + DOWN_BOUND_S``, so requests also cross the scale-down (a
replica stopping with requests on it). No timing is asserted: the bounds only end a test that
would otherwise wait for ever.

Every request is answered 200, or 503 with ``Retry-After`` (client timeout ``CLIENT_TIMEOUT_S``:
a request that hangs fails the test). A fifth of the requests send documents to ``/index``
(unique ids): those answered 200 are in the index, the 503s are retried by the client with the
same ids, and at the end the index holds exactly the documents sent, each once.

**To zero** (``min_replicas`` 0): the idle app goes to no replica; ``/healthz`` then answers 200
``scaled_to_zero`` from the proxy (not the 503 ``unavailable`` of a lost replica) without waking
the app; the first request waits for a cold start (client bound ``COLD_BOUND_S``) and gets its
answer.

The times measured (load start -> second replica RUNNING, load stop -> back to one, the cold
start) and the statuses by phase are printed (``pytest -s``); docs/serve.md quotes them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest
from fixtures_osmem import serve_config, wait_healthy

from spladeray.serving.proxy import ReplicaLossMiddleware

APP = "spladeray-autoscale"
PREFIX = "/autoscale"
ZERO_APP = "spladeray-zero"
ZERO_PREFIX = "/zero"
INDEX = "autoscale-test"
HEAVY = 6  # clients under load: ~6 ongoing requests on one replica, 3x the target (2)
TARGET = 2
DOWNSCALE_DELAY_S = 3.0
UP_BOUND_S = 180.0  # load start -> 2 RUNNING replicas (the new one loads its model)
DOWN_BOUND_S = 90.0  # on top of downscale_delay_s: the averaging window, the replica's drain
COLD_BOUND_S = 180.0  # first request after idle: a replica starts and loads the model
CLIENT_TIMEOUT_S = 120.0
BATCH = 2  # documents per /index request
AUTOSCALING = {
    "upscale_delay_s": 0.5,
    "downscale_delay_s": DOWNSCALE_DELAY_S,
    "look_back_period_s": 2.0,  # Ray's default 30 s keeps the load in the average for 30 s
    "metrics_interval_s": 0.5,  # Ray's default 10 s: replicas report that rarely
    "graceful_shutdown_timeout_s": 10.0,
    "health_check_period_s": 1.0,
}


def _replicas(app: str) -> Counter:
    """Replicas of the app's Encoder by state, as ``serve.status()`` reports them."""
    from ray import serve

    deployment = serve.status().applications[app].deployments["Encoder"]
    return +Counter(
        {getattr(state, "value", state): n for state, n in deployment.replica_states.items()}
    )


def _target(app: str) -> int:
    """The autoscaler's current target number of replicas: ``serve.status()`` has no target,
    so the controller's details, what ``serve status`` and the dashboard read."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    return details["applications"][app]["deployments"]["Encoder"]["target_num_replicas"]


def _osmem_index(clone_url: str) -> dict:
    return {
        "backend": "opensearch",
        "name": INDEX,
        "opensearch": {"hosts": [clone_url], "username_env": None, "password_env": None},
    }


@pytest.fixture
def scaling_app(ray_cluster, serve_url, osmem, splade_tiny, tmp_path):
    from ray import serve

    from spladeray.serving.app import build_app

    clone = osmem.clone()
    cfg = serve_config(
        splade_tiny,
        tmp_path / "unused",
        index=_osmem_index(clone.url),
        min_replicas=1,
        max_replicas=2,
        target_ongoing_requests=TARGET,
        max_ongoing_requests=16,
        query_max_batch_size=16,
        **AUTOSCALING,
    )
    serve.run(build_app(cfg, check_model=False), name=APP, route_prefix=PREFIX)
    url = f"{serve_url}{PREFIX}"
    wait_healthy(url)
    try:
        yield {"url": url, "os_url": clone.url}
    finally:
        serve.delete(APP)
        clone.close()


def _request(i: int, tag: str) -> tuple[str, dict, list[str]]:
    """The i-th request of a client: (route, body, ids it indexes)."""
    if i % 5 == 0:
        ids = [f"{tag}-{i}-{j}" for j in range(BATCH)]
        docs = [{"id": d, "text": f"Document {d} about cells, proteins and energy."} for d in ids]
        return "/index", {"documents": docs}, ids
    return "/encode", {"texts": [f"{tag} request {i}: mitochondria produce energy"]}, []


async def _client(client, url: str, tag: str, stop: asyncio.Event, phase, results: list):
    """Requests one after another until ``stop``; each result is (phase, route, status,
    Retry-After, ids, response)."""
    i = 0
    while not stop.is_set():
        route, body, ids = _request(i, tag)
        i += 1
        at = phase()
        try:
            r = await client.post(f"{url}{route}", json=body)
            results.append((at, route, r.status_code, r.headers.get("retry-after"), ids, r))
        except httpx.TimeoutException:
            results.append((at, route, "timeout", None, ids, None))


async def _poll(what: str, check, bound_s: float, interval: float = 0.25) -> float:
    """Await ``check()`` (run in a thread: ``serve.status()`` blocks) until true; returns the
    seconds it took. Past ``bound_s`` the test fails."""
    started = time.monotonic()
    while not await asyncio.to_thread(check):
        assert time.monotonic() - started < bound_s, f"{what} not seen within {bound_s:g}s"
        await asyncio.sleep(interval)
    return time.monotonic() - started


async def _up_and_down(url: str, results: list) -> dict:
    phase = ["up"]
    limits = httpx.Limits(max_connections=HEAVY + 4)
    async with httpx.AsyncClient(limits=limits, timeout=CLIENT_TIMEOUT_S) as client:
        heavy_stop, light_stop = asyncio.Event(), asyncio.Event()
        current = lambda: phase[0]  # noqa: E731
        heavy = [
            asyncio.create_task(_client(client, url, f"h{k}", heavy_stop, current, results))
            for k in range(HEAVY)
        ]
        light = asyncio.create_task(_client(client, url, "l", light_stop, current, results))
        try:
            up_s = await _poll(
                "2 RUNNING replicas", lambda: _replicas(APP) == {"RUNNING": 2}, UP_BOUND_S
            )
            phase[0] = "down"  # the heavy load stops; the light client goes on
            heavy_stop.set()
            t_stop = time.monotonic()
            await asyncio.gather(*heavy)
            await _poll(
                "1 replica again",
                lambda: _replicas(APP) == {"RUNNING": 1},
                DOWNSCALE_DELAY_S + DOWN_BOUND_S,
            )
            down_s = time.monotonic() - t_stop  # from the load's stop, its last answers included
            phase[0] = "after"
            n = len(results)
            while len(results) < n + 10:  # a few more on the one replica left
                await asyncio.sleep(0.1)
        finally:
            heavy_stop.set()
            light_stop.set()
            await asyncio.gather(*heavy, light, return_exceptions=True)
    return {"up_s": up_s, "down_s": down_s}


def test_scales_up_under_load_and_down_after_it_with_every_document_indexed_once(scaling_app):
    from opensearchpy import OpenSearch

    url = scaling_app["url"]
    assert _replicas(APP) == {"RUNNING": 1}
    results: list = []
    started = time.monotonic()
    times = asyncio.run(_up_and_down(url, results))
    elapsed = time.monotonic() - started

    by_phase = Counter(f"{at} {status}" for at, _, status, *_ in results)
    print(
        f"\n[autoscale] load start -> 2nd replica RUNNING {times['up_s']:.1f}s; load stop -> 1 "
        f"replica {times['down_s']:.1f}s (downscale_delay_s {DOWNSCALE_DELAY_S:g}); "
        f"{len(results)} requests in {elapsed:.0f}s by phase and status: {dict(by_phase)}"
    )
    errors = Counter(r.text[:80] for _, _, status, _, _, r in results if status == 503)
    print(f"[autoscale] 503s by message: {dict(errors)}")
    statuses = Counter(str(status) for _, _, status, *_ in results)
    assert set(statuses) <= {"200", "503"}, by_phase  # no 500, no 4xx, no client timeout
    for _, route, status, retry_after, _, response in results:
        if status == 503:
            assert retry_after and int(retry_after) >= 0, (route, response.text)
            assert response.json()["error"]
        else:
            assert response.json(), route
    assert {at for at, *_ in results} == {"up", "down", "after"}

    # /index: what was reported indexed is there; the client retries its 503s with the same ids
    client = OpenSearch(hosts=[scaling_app["os_url"]])
    client.indices.refresh(index=INDEX)
    retry: list[list[str]] = []
    for _, route, status, _, ids, response in results:
        if route != "/index":
            continue
        if status == 200:
            body = response.json()
            assert body["indexed"] == BATCH and not body["failed"], body
            for doc_id in ids:
                assert client.exists(index=INDEX, id=doc_id), doc_id
        else:
            retry.append(ids)
    for ids in retry:
        docs = [{"id": d, "text": f"Document {d} about cells, proteins and energy."} for d in ids]
        r = httpx.post(f"{url}/index", json={"documents": docs}, timeout=CLIENT_TIMEOUT_S)
        assert r.status_code == 200 and r.json()["indexed"] == BATCH, r.text
    client.indices.refresh(index=INDEX)
    sent = {d for *_, ids, _ in results for d in ids}
    assert len(sent) == BATCH * sum(1 for _, route, *_ in results if route == "/index")
    body = {"query": {"match_all": {}}, "size": 10_000, "_source": False}
    stored = [h["_id"] for h in client.search(index=INDEX, body=body)["hits"]["hits"]]
    assert len(stored) == len(set(stored))  # none stored twice
    assert set(stored) == sent  # none lost, none extra
    assert client.count(index=INDEX)["count"] == len(sent)


@pytest.fixture
def zero_app(ray_cluster, serve_url, splade_tiny, tmp_path):
    from ray import serve

    from spladeray.serving.app import build_app

    cfg = serve_config(
        splade_tiny,
        tmp_path / "index",
        min_replicas=0,
        max_replicas=1,
        downscale_to_zero_delay_s=1.0,
        **AUTOSCALING,
    )
    serve.run(build_app(cfg, check_model=False), name=ZERO_APP, route_prefix=ZERO_PREFIX)
    url = f"{serve_url}{ZERO_PREFIX}"
    wait_healthy(url)  # the app starts with one replica (initial_replicas 1)
    try:
        yield url
    finally:
        serve.delete(ZERO_APP)


def test_scales_to_zero_says_so_and_the_first_request_waits_for_a_cold_start(zero_app):
    url = zero_app
    idle_s = asyncio.run(_poll("no replica", lambda: not _replicas(ZERO_APP), 120))

    for _ in range(3):  # health checks do not wake the app: the proxy answers them
        r = httpx.get(f"{url}/healthz", timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "scaled_to_zero", r.json()
    assert _target(ZERO_APP) == 0 and not _replicas(ZERO_APP)

    started = time.monotonic()
    r = httpx.post(
        f"{url}/encode", json={"texts": ["sparse retrieval"], "kind": "query"}, timeout=COLD_BOUND_S
    )
    cold_s = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert len(r.json()["vectors"]) == 1 and r.json()["vectors"][0]
    assert _replicas(ZERO_APP) == {"RUNNING": 1}
    r = httpx.get(f"{url}/healthz", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text
    print(
        f"\n[autoscale] idle -> 0 replicas {idle_s:.1f}s; cold start (first request) {cold_s:.1f}s"
    )


class _Answers:
    """An app behind the middleware that answers 200 ``{"from": "replica"}``."""

    def __init__(self):
        self.calls = 0

    async def __call__(self, scope, receive, send):
        self.calls += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"from": "replica"}'})


def _state(target: int, replicas: int, prefix: str = "/zero") -> dict:
    deployment = {"target_num_replicas": target, "replicas": [{}] * replicas}
    return {
        "applications": {
            "root": {
                "route_prefix": "/",
                "deployments": {"Encoder": dict(deployment, target_num_replicas=1, replicas=[{}])},
            },
            "zero": {"route_prefix": prefix, "deployments": {"Encoder": deployment}},
        }
    }


async def _get(app, path: str) -> tuple[int, bytes]:
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    await app({"type": "http", "method": "GET", "path": path, "headers": []}, receive, send)
    return sent[0]["status"], sent[1]["body"]


@pytest.mark.parametrize(
    ("path", "target", "replicas", "scaled_to_zero"),
    [
        ("/zero/healthz", 0, 0, True),  # idle, scaled to zero: the proxy answers
        ("/zero/healthz", 1, 0, False),  # a cold start (or a replacement) under way: forwarded
        ("/zero/healthz", 1, 1, False),  # running: the replica answers
        ("/zeroish/healthz", 0, 0, False),  # another app (the root one) owns this path
        ("/healthz", 0, 0, False),
    ],
)
def test_healthz_is_answered_by_the_proxy_only_for_an_app_scaled_to_zero(
    path, target, replicas, scaled_to_zero
):
    inner = _Answers()
    middleware = ReplicaLossMiddleware(inner)

    async def state():
        return _state(target, replicas)

    middleware._serve_state = state  # Serve's controller needs a running Serve; its answer here
    status, body = asyncio.run(_get(middleware, path))
    assert status == 200
    assert (b"scaled_to_zero" in body) is scaled_to_zero
    assert inner.calls == (0 if scaled_to_zero else 1)


def test_an_averaging_window_shorter_than_the_report_interval_is_refused(splade_tiny, tmp_path):
    from spladeray.config import ConfigError

    with pytest.raises(ConfigError, match=r"look_back_period_s \(5\) must exceed .*\(10\)"):
        serve_config(splade_tiny, tmp_path, look_back_period_s=5)
