"""Mixed load on the Serve app with memory bounded: search, encode and small index batches from
a bounded asyncio (httpx) client on 127.0.0.1, for a fixed time.

    .venv/bin/python bench/load.py [--duration 60] [--concurrency 8] [--backend osmem|local]

Reports throughput, p50/p99 per route and overall, error counts by status (a client timeout
counts as ``timeout``), and the RSS of every replica after warm-up and at the end: the drift
must stay within ``--max-drift`` (10%), else the script exits 1. The run is:

1. the app starts (one replica, the configured model) over osmem (default: the index lives in
   another process, so the replica's RSS is the server's own) or the embedded index (which keeps
   every write in the replica's memory, so its drift includes the index's growth);
2. a pool of ``--pool`` SciFact documents is indexed; index requests later rewrite ids from
   that pool, so the index stops growing and what grows in the replica is the server's;
3. warm-up: ``--warmup`` seconds of the same mixed load (every route, every batch shape), then
   the replicas' RSS is sampled;
4. the measured load for ``--duration`` seconds, then RSS again.

It prints a ``RESULT`` line for ``bench/run_all.py``: baseline = RSS after warm-up, candidate =
RSS at the end, ratio = baseline / candidate (1.0: flat; 0.95: 5% growth), with throughput,
latencies and error counts beside it. tests/serving/test_load.py runs a 10-second version on
the test session's cluster through :func:`run_load`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: _env, _procs
import _env  # noqa: E402  platform/ on sys.path, offline defaults

ROOT = _env.ROOT
_env.serve_proxy_hook()

MIX = {"search": 0.5, "encode": 0.3, "index": 0.2}
"""Share of each kind of request."""

QUERIES = [
    "what causes diabetes",
    "do vitamins prevent cancer",
    "how do cells divide",
    "effects of smoking on the lungs",
    "which proteins do ribosomes make",
    "is obesity linked to heart disease",
]


def pct(values: Sequence[float], q: float) -> float | None:
    """The q-quantile in milliseconds (nearest rank), or None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] * 1000, 1)


def load_docs(n: int) -> list[dict[str, str]]:
    from spladeray.data.beir import iter_corpus
    from spladeray.paths import asset

    return [
        {"id": str(d["_id"]), "title": d.get("title") or "", "text": d.get("text") or ""}
        for d in iter_corpus(asset("beir", "scifact"), n)
    ]


def make_request(rng: random.Random, docs: list[dict], index_batch: int) -> tuple[str, str, dict]:
    """One request of the mix: (kind, route, body)."""
    kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
    if kind == "search":
        return kind, "/search", {"query": rng.choice(QUERIES), "size": 10}
    if kind == "encode":
        doc = rng.choice(docs)
        if rng.random() < 0.5:
            return kind, "/encode", {"texts": [doc["text"] or doc["title"]]}
        return kind, "/encode", {"texts": [rng.choice(QUERIES)], "kind": "query"}
    return kind, "/index", {"documents": rng.sample(docs, min(index_batch, len(docs)))}


async def _drive(
    url: str,
    seconds: float,
    concurrency: int,
    docs: list[dict],
    index_batch: int,
    seed: int,
    timeout_s: float,
) -> list[tuple[str, Any, float]]:
    """``concurrency`` clients, each sending its next request when the last is answered, until
    ``seconds`` have passed; returns (kind, status or "timeout"/error name, latency s)."""
    import httpx

    out: list[tuple[str, Any, float]] = []
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:

        async def one_client(k: int) -> None:
            rng = random.Random(seed * 1000 + k)
            while time.monotonic() < deadline:
                kind, route, body = make_request(rng, docs, index_batch)
                t0 = time.perf_counter()
                try:
                    r = await client.post(f"{url}{route}", json=body)
                    status: Any = r.status_code
                except httpx.TimeoutException:
                    status = "timeout"
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                out.append((kind, status, time.perf_counter() - t0))

        await asyncio.gather(*(one_client(k) for k in range(concurrency)))
    return out


def _rss(pids: Sequence[int]) -> dict[int, int | None]:
    import _procs

    return {pid: _procs.rss_bytes(pid) for pid in pids}


def run_load(
    url: str,
    docs: list[dict],
    replica_pids: Callable[[], Sequence[int]],
    *,
    duration: float = 60.0,
    warmup: float = 10.0,
    concurrency: int = 8,
    index_batch: int = 4,
    seed: int = 0,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Index ``docs`` (the pool), warm up, sample RSS, run the measured load, sample RSS again.

    ``replica_pids`` gives the pids of the replicas on this machine (called after warm-up and
    at the end; a replica that was replaced shows up as a pid without both samples).
    """
    import httpx

    for start in range(0, len(docs), 64):
        r = httpx.post(f"{url}/index", json={"documents": docs[start : start + 64]}, timeout=300)
        r.raise_for_status()
    warm = asyncio.run(_drive(url, warmup, concurrency, docs, index_batch, seed, timeout_s))
    pids_warm = list(replica_pids())
    rss_warm = _rss(pids_warm)
    started = time.monotonic()
    measured = asyncio.run(
        _drive(url, duration, concurrency, docs, index_batch, seed + 1, timeout_s)
    )
    elapsed = time.monotonic() - started
    pids_end = list(replica_pids())
    rss_end = _rss(pids_end)

    latencies: dict[str, list[float]] = defaultdict(list)
    for kind, status, seconds in measured:
        if status == 200:
            latencies[kind].append(seconds)
            latencies["all"].append(seconds)
    statuses = Counter(str(status) for _, status, _ in warm + measured)
    ok = len(latencies["all"])
    replicas = []
    for pid in sorted(set(pids_warm) | set(pids_end)):
        before, after = rss_warm.get(pid), rss_end.get(pid)
        drift = (after - before) / before * 100 if before and after else None
        replicas.append(
            {
                "pid": pid,
                "rss_warm_mib": round(before / 2**20, 1) if before else None,
                "rss_end_mib": round(after / 2**20, 1) if after else None,
                "drift_pct": round(drift, 2) if drift is not None else None,
            }
        )
    drifts = [r["drift_pct"] for r in replicas if r["drift_pct"] is not None]
    return {
        "duration_s": round(elapsed, 1),
        "warmup_s": warmup,
        "concurrency": concurrency,
        "requests": len(measured),
        "ok": ok,
        "throughput_rps": round(ok / elapsed, 2) if elapsed else None,
        "by_route": {
            kind: {
                "ok": len(values),
                "rps": round(len(values) / elapsed, 2),
                "p50_ms": pct(values, 0.5),
                "p99_ms": pct(values, 0.99),
            }
            for kind, values in sorted(latencies.items())
        },
        "p50_ms": pct(latencies["all"], 0.5),
        "p99_ms": pct(latencies["all"], 0.99),
        "statuses": dict(sorted(statuses.items())),
        "errors_5xx": sum(n for s, n in statuses.items() if s.isdigit() and int(s) >= 500),
        "replicas": replicas,
        "rss_drift_pct": max(drifts, key=abs) if drifts else None,
    }


def print_report(report: dict[str, Any]) -> None:
    print(
        f"\nmixed load: {report['duration_s']}s after {report['warmup_s']}s warm-up, "
        f"concurrency {report['concurrency']}"
    )
    print(
        f"  throughput  : {report['throughput_rps']} requests/s ({report['ok']} answered 200 of "
        f"{report['requests']})"
    )
    print(f"  latency     : p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms")
    for kind, row in report["by_route"].items():
        if kind != "all":
            print(
                f"    {kind:7s}: {row['rps']:7.2f}/s  p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms"
            )
    print(f"  by status   : {report['statuses']} (5xx: {report['errors_5xx']})")
    for r in report["replicas"]:
        print(
            f"  replica {r['pid']}: RSS {r['rss_warm_mib']} MiB after warm-up -> "
            f"{r['rss_end_mib']} MiB at the end ({r['drift_pct']}%)"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before RSS sample 1")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--backend", choices=["osmem", "local"], default="osmem")
    parser.add_argument("--pool", type=int, default=256, help="documents index requests draw from")
    parser.add_argument("--index-batch", type=int, default=4, help="documents per /index request")
    parser.add_argument("--max-drift", type=float, default=10.0, help="RSS drift bound, percent")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import tempfile

    import _procs
    import ray
    from ray import serve

    from spladeray.config import load_config
    from spladeray.serving.app import build_app

    server = None
    tmp = tempfile.TemporaryDirectory(prefix="spladeray-load-")
    overrides = [
        "model.device=cpu",
        "serve.min_replicas=1",
        "serve.max_replicas=1",
        "serve.num_gpus=0",
        f"serve.torch_threads={os.cpu_count() or 1}",
        "index.name=load",
    ]
    if args.backend == "osmem":
        from osmem_server import OsmemServer

        server = OsmemServer.start(japanese=False, addr="127.0.0.1:0")
        overrides += [
            "index.backend=opensearch",
            f"index.opensearch.hosts=[{server.url}]",
            "index.opensearch.username_env=null",
            "index.opensearch.password_env=null",
        ]
    else:
        overrides += ["index.backend=local", f"index.path={tmp.name}"]
    cfg = load_config(ROOT / "configs" / "demo.yaml", overrides)
    docs = load_docs(args.pool)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(cfg, check_model=False), name="load", route_prefix="/")
        report = run_load(
            f"http://127.0.0.1:{port}",
            docs,
            lambda: _procs.find("ray::ServeReplica:load:Encoder"),
            duration=args.duration,
            warmup=args.warmup,
            concurrency=args.concurrency,
            index_batch=args.index_batch,
            seed=args.seed,
        )
    finally:
        serve.shutdown()
        ray.shutdown()
        if server is not None:
            server.close()
        tmp.cleanup()
    report["backend"] = args.backend
    print_report(report)
    rss = [r for r in report["replicas"] if r["rss_warm_mib"] and r["rss_end_mib"]]
    warm = sum(r["rss_warm_mib"] for r in rss)
    end = sum(r["rss_end_mib"] for r in rss)
    print(
        "RESULT "
        + json.dumps(
            {
                "name": "load",
                "metric": "replica RSS MiB",
                "baseline": warm,
                "candidate": end,
                "ratio": round(warm / end, 3) if end else None,
                "baseline_name": f"after {args.warmup:g}s warm-up",
                "candidate_name": f"after {report['duration_s']:g}s mixed load "
                f"({report['throughput_rps']} req/s, p99 {report['p99_ms']} ms, "
                f"5xx {report['errors_5xx']})",
                **{k: v for k, v in report.items() if k != "replicas"},
            }
        )
    )
    drift = report["rss_drift_pct"]
    bad = []
    if report["errors_5xx"]:
        bad.append(f"{report['errors_5xx']} responses were 5xx")
    if drift is None or abs(drift) > args.max_drift:
        bad.append(f"replica RSS drift {drift}% is beyond {args.max_drift}%")
    for problem in bad:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
