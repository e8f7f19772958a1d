"""Serving benchmark, what users do, each against in-process code in the same run (default):

- query latency: ``/search`` p50/p99 at concurrency 1 and 4, against in-process
  ``encode_queries`` + ``index.search`` at the same concurrency (threads). Target: HTTP p50 <=
  1.5 x in-process p50 + 5 ms;
- bulk ingest: ``/index`` with 64 documents per request, against in-process
  ``encode_documents`` + ``index.add`` + ``refresh`` of the same batches (what the route does).
  Target: >= 0.9 x in-process docs/s.

    .venv/bin/python bench/serve.py [--docs 1024] [--queries 200] [--batch 64]

Both on the embedded index (one process holds it; the replica's is its own copy of the same
batches), 1 replica, the API open on loopback (no token), as ``serve run`` on a laptop.

``--encode`` measures the older figure instead: HTTP ``/encode`` docs/s at concurrency 16 vs
``encode_documents`` in one process (same documents, same run), p50/p99 latency and where the
CPU goes (replica, proxy, client: ms of CPU per document, from /proc); then ``/index`` into osmem
vs encode-only. At one document per request it is bound by the HTTP work that shares 2 cores
with the model (docs/serve.md); its 0.85 target is retired. The app is
the one ``serve run serve/config.yaml`` starts: one deployment, proxy -> replica, with the
proxy middleware of :mod:`spladeray.serving.proxy` installed as docs/serve.md says.

``--direct-ingress`` measures Ray Serve 2.60's direct ingress instead
(``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``): the replica serves HTTP on its own port (from 30000)
and the client posts there, with no proxy hop. It is a measurement of what the proxy costs, not
a deployment mode of the platform: with several replicas a load balancer must front their ports
(Ray's HAProxy mode needs the ``haproxy`` binary), and the proxy's replica-loss answers (503 +
``Retry-After``) are not on that path. 1 replica only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: _env, _procs
import _env  # noqa: E402  platform/ on sys.path, offline defaults

ROOT = _env.ROOT
_env.serve_proxy_hook()

import _procs  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_docs(n: int) -> list[str]:
    from spladeray.data.beir import doc_text, iter_corpus
    from spladeray.paths import asset

    return [doc_text(d) for d in iter_corpus(asset("beir", "scifact"), n)]


async def fire(
    url: str, bodies: list[dict], concurrency: int
) -> tuple[float, list[float], list[int]]:
    import httpx

    latencies: list[float] = []
    statuses: list[int] = []
    queue: asyncio.Queue = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def worker():
            while not queue.empty():
                body = queue.get_nowait()
                t0 = time.perf_counter()
                r = await client.post(url, json=body)
                latencies.append(time.perf_counter() - t0)
                statuses.append(r.status_code)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, latencies, statuses


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] * 1000


def mean_batch(url: str) -> float:
    """Mean texts per document model call, from the replica's Prometheus ``/metrics``."""
    import httpx

    total = count = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("spladeray_encode_batch_size_sum") and 'kind="document"' in line:
            total = float(line.split()[-1])
        if line.startswith("spladeray_encode_batch_size_count") and 'kind="document"' in line:
            count = float(line.split()[-1])
    return total / count if count else float("nan")


def direct_ingress_url() -> str:
    """The replica's own HTTP server under direct ingress: Serve allocates ports from
    ``RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT`` (30000) up, so the first that answers the app's
    ``/healthz`` is the replica's."""
    import httpx

    first = int(os.environ.get("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", "30000"))
    for port in range(first, first + 100):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return f"http://127.0.0.1:{port}"
        except httpx.HTTPError:
            continue
    raise SystemExit(f"no replica answers /healthz on ports {first}-{first + 99}")


def latencies_in_process(encoder, index, name: str, queries: list[str], concurrency: int):
    """Per-query seconds of ``encode_queries`` + ``index.search``, ``concurrency`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    def one(q: str) -> float:
        t0 = time.perf_counter()
        index.search(name, encoder.encode_queries([q])[0], 10)
        return time.perf_counter() - t0

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, queries))


def ingest_in_process(encoder, index, name: str, docs: list[str], batch: int) -> float:
    """docs/s of encode + add + refresh per batch of ``batch`` documents (what /index does)."""
    index.delete(name)
    index.create(name)
    t0 = time.perf_counter()
    for i in range(0, len(docs), batch):
        part = docs[i : i + batch]
        vectors = encoder.encode_documents(part, batch_size=32)
        ids = [f"d{i + j}" for j in range(len(part))]
        index.add(name, ids, vectors, [{"text": t} for t in part])
        index.refresh(name)
    return len(docs) / (time.perf_counter() - t0)


def usage(args) -> None:
    """The default run: /search latency and /index bulk ingest vs in-process (module doc)."""
    import tempfile

    import ray
    import torch
    from ray import serve

    from spladeray.config import load_config
    from spladeray.data.beir import load_queries
    from spladeray.index import open_index
    from spladeray.model import load_encoder_from_config
    from spladeray.paths import asset
    from spladeray.serving.app import build_app

    docs = load_docs(args.docs)
    queries = list(load_queries(asset("beir", "scifact")).values())[: args.queries]
    tmp = Path(tempfile.mkdtemp(prefix="spladeray-bench-serve-"))
    cfg = load_config(
        ROOT / "configs" / "demo.yaml",
        [
            "model.device=cpu",
            "serve.min_replicas=1",
            "serve.max_replicas=1",
            f"serve.torch_threads={args.threads}",
            "serve.num_gpus=0",
            f"serve.max_documents_per_request={max(args.batch, 64)}",
            f"index.path={tmp / 'served'}",
            "index.name=bench",
            *args.set,
        ],
    )
    torch.set_num_threads(args.threads)
    encoder = load_encoder_from_config(cfg.model)
    local = open_index(
        cfg.index.model_copy(update={"path": tmp / "local"}), tokenizer=cfg.model.path
    )
    encoder.encode_documents(docs[:32])  # warm up
    ingest_before = ingest_in_process(encoder, local, "bench", docs, args.batch)
    latencies_in_process(encoder, local, "bench", queries[:20], 1)  # warm up

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    serve.run(build_app(cfg, check_model=False), name="bench", route_prefix="/")
    try:
        warm = [{"documents": [{"id": "warm", "text": docs[0]}]}]
        asyncio.run(fire(f"{url}/index", warm * 4, 1))
        bodies = [
            {
                "documents": [
                    {"id": f"d{i + j}", "text": t} for j, t in enumerate(docs[i : i + args.batch])
                ]
            }
            for i in range(0, len(docs), args.batch)
        ]
        idx_s, idx_lat, idx_status = asyncio.run(fire(f"{url}/index", bodies, 1))
        http_ingest = len(docs) / idx_s
        ingest_after = ingest_in_process(encoder, local, "bench", docs, args.batch)
        ingest = (ingest_before + ingest_after) / 2
        print(f"\n/index  {len(docs)} SciFact docs, {args.batch}/request, concurrency 1, 1 replica")
        print(
            f"  in-process encode+add+refresh : {ingest:8.1f} docs/s (before {ingest_before:.1f}, after {ingest_after:.1f})"
        )
        print(
            f"  HTTP /index                   : {http_ingest:8.1f} docs/s (non-200: {len(idx_status) - idx_status.count(200)}; p50 {pct(idx_lat, 0.5):.0f} ms)"
        )
        print(f"  ratio HTTP / in-process       : {http_ingest / ingest:8.2f}   (target >= 0.90)")
        results: dict = {
            "index_ratio": round(http_ingest / ingest, 3),
            "index_http_docs_s": round(http_ingest, 1),
            "index_direct_docs_s": round(ingest, 1),
        }
        asyncio.run(fire(f"{url}/search", [{"query": q} for q in queries[:20]], 1))  # warm up
        print(
            f"\n/search  {len(queries)} SciFact queries, top 10, embedded index of {len(docs)} docs"
        )
        for conc in (1, 4):
            direct = latencies_in_process(encoder, local, "bench", queries, conc)
            _, http, statuses = asyncio.run(
                fire(f"{url}/search", [{"query": q} for q in queries], conc)
            )
            d50, d99, h50, h99 = (
                pct(direct, 0.5),
                pct(direct, 0.99),
                pct(http, 0.5),
                pct(http, 0.99),
            )
            target = 1.5 * d50 + 5
            verdict = "meets" if h50 <= target else "MISSES"
            print(
                f"  concurrency {conc}: in-process p50 {d50:6.1f} ms p99 {d99:6.1f} ms | HTTP p50 {h50:6.1f} ms p99 {h99:6.1f} ms (non-200: {len(statuses) - statuses.count(200)}) | p50 target <= {target:.1f} ms: {verdict}"
            )
            results[f"search_c{conc}"] = {
                "direct_p50_ms": round(d50, 1),
                "direct_p99_ms": round(d99, 1),
                "http_p50_ms": round(h50, 1),
                "http_p99_ms": round(h99, 1),
                "target_p50_ms": round(target, 1),
            }
        print("RESULT " + json.dumps({"name": "serve-usage", **results}))
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--encode", action="store_true", help="the older /encode figure (doc)")
    parser.add_argument("--docs", type=int, default=None, help="1024 (default run), 256 (--encode)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64, help="documents per /index request")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--per-request", type=int, default=1, help="documents per /encode request")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--direct-ingress",
        action="store_true",
        help="post to the replica's own HTTP port (Ray Serve direct ingress), not the proxy",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    args = parser.parse_args()
    if not args.encode:
        args.docs = args.docs or 1024
        usage(args)
        return
    args.docs = args.docs or 256

    import ray
    import torch
    from osmem_server import OsmemServer
    from ray import serve

    from spladeray.config import load_config
    from spladeray.model import load_encoder_from_config
    from spladeray.serving.app import build_app

    docs = load_docs(args.docs)
    cfg = load_config(
        ROOT / "configs" / "demo.yaml",
        [
            "model.device=cpu",
            f"serve.min_replicas={args.replicas}",
            f"serve.max_replicas={args.replicas}",
            f"serve.torch_threads={args.threads}",
            "serve.num_gpus=0",
            "serve.max_batch_size=32",
            "serve.max_ongoing_requests=64",
            "serve.target_ongoing_requests=32",
            *args.set,
        ],
    )

    # 1. in-process baseline (measured again after the HTTP run; the mean is the baseline, so a
    #    machine whose load drifts during the run does not favour either side)
    torch.set_num_threads(args.threads)
    encoder = load_encoder_from_config(cfg.model)
    encoder.encode_documents(docs[:32])  # warm up

    direct_cpu, direct_n = 0.0, 0

    def in_process() -> float:
        nonlocal direct_cpu, direct_n
        c0, t0 = time.process_time(), time.perf_counter()
        encoder.encode_documents(docs, batch_size=32)
        direct_cpu += time.process_time() - c0
        direct_n += len(docs)
        return len(docs) / (time.perf_counter() - t0)

    direct_before = in_process()

    # 2. HTTP /encode through Serve
    if args.direct_ingress:
        if args.replicas != 1:
            parser.error("--direct-ingress measures 1 replica (several need a load balancer)")
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"  # read by the cluster ray.init starts
    ray.init(num_cpus=max(4, args.replicas + 2), include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    serve.run(build_app(cfg, check_model=False), name="bench", route_prefix="/")
    encode_url = direct_ingress_url() if args.direct_ingress else url
    k = args.per_request
    bodies = [{"texts": docs[i : i + k]} for i in range(0, len(docs), k)]
    asyncio.run(fire(f"{encode_url}/encode", bodies[:64], args.concurrency))  # warm up
    procs = {
        "replica": _procs.find("ray::ServeReplica:bench:"),  # every replica of the app
        "proxy": _procs.find("ray::ProxyActor"),
        "client": [os.getpid()],
    }
    cpu0 = {name: [_procs.cpu_seconds(p) or 0.0 for p in pids] for name, pids in procs.items()}
    http_s, lat, statuses = asyncio.run(fire(f"{encode_url}/encode", bodies, args.concurrency))
    cpu_ms = {
        name: 1000
        * sum((_procs.cpu_seconds(p) or 0.0) - c for p, c in zip(pids, cpu0[name], strict=True))
        for name, pids in procs.items()
    }
    ok = sum(1 for s in statuses if s == 200) * k
    calls = mean_batch(url)
    http = ok / http_s
    direct_after = in_process()
    direct = (direct_before + direct_after) / 2
    print(
        f"\n/encode  {len(docs)} SciFact docs, {k}/request, concurrency {args.concurrency}, "
        f"{args.replicas} replica(s) x {args.threads} torch threads"
        + (f", direct ingress ({encode_url}, no proxy)" if args.direct_ingress else "")
    )
    print(
        f"  in-process encode_documents : {direct:8.1f} docs/s "
        f"(before {direct_before:.1f}, after {direct_after:.1f}); "
        f"{1000 * direct_cpu / direct_n:.1f} ms CPU/doc"
    )
    print(
        f"  HTTP /encode                : {http:8.1f} docs/s  (non-200: {len(statuses) - statuses.count(200)})"
    )
    print(f"  ratio HTTP / in-process     : {http / direct:8.2f}   (target >= 0.85)")
    print(f"  texts per model call        : {calls:8.1f}   (replica's /metrics, warm-up included)")
    print(
        f"  latency per request         : p50 {pct(lat, 0.5):.1f} ms   p99 {pct(lat, 0.99):.1f} ms"
    )
    per_doc = {name: ms / max(ok, 1) for name, ms in cpu_ms.items()}
    print(
        "  CPU ms per document         : "
        + ", ".join(f"{name} {ms:.1f}" for name, ms in per_doc.items())
        + f" (pids {procs})"
    )
    # what a busy machine changes least: CPU per document in-process vs over HTTP, all processes
    cpu_ratio = (1000 * direct_cpu / direct_n) / max(sum(per_doc.values()), 1e-9)
    print(f"  CPU ratio in-process / HTTP : {cpu_ratio:8.2f}   (CPU-bound estimate of the ratio)")

    # 3. /index into osmem vs encode-only (same batches)
    server = OsmemServer.start(japanese=False, addr="127.0.0.1:0")
    try:
        os_cfg = cfg.model_copy(deep=True)
        os_cfg.index.backend = "opensearch"
        os_cfg.index.name = "bench"
        os_cfg.index.opensearch.hosts = [server.url]
        os_cfg.index.opensearch.username_env = None
        os_cfg.index.opensearch.password_env = None
        serve.run(build_app(os_cfg, check_model=False), name="bench", route_prefix="/")
        batch = 16
        enc_bodies = [{"texts": docs[i : i + batch]} for i in range(0, len(docs), batch)]
        idx_bodies = [
            {
                "documents": [
                    {"id": f"d{i + j}", "text": t} for j, t in enumerate(docs[i : i + batch])
                ]
            }
            for i in range(0, len(docs), batch)
        ]
        conc = 4
        enc_s, _, _ = asyncio.run(fire(f"{url}/encode", enc_bodies, conc))
        idx_s, idx_lat, idx_status = asyncio.run(fire(f"{url}/index", idx_bodies, conc))
        print(f"\n/index into osmem, {batch} docs/request, concurrency {conc}")
        print(f"  encode-only /encode : {len(docs) / enc_s:8.1f} docs/s")
        print(
            f"  /index (encode+bulk): {len(docs) / idx_s:8.1f} docs/s  (non-200: {len(idx_status) - idx_status.count(200)})"
        )
        print(
            f"  indexing cost       : {100 * (idx_s - enc_s) / enc_s:+.0f}% time over encode-only; "
            f"p50 {pct(idx_lat, 0.5):.0f} ms p99 {pct(idx_lat, 0.99):.0f} ms per request"
        )
        print(
            "RESULT "
            + json.dumps(
                {
                    "name": "serve",
                    "metric": "docs/s",
                    "baseline": round(direct, 2),
                    "candidate": round(http, 2),
                    "baseline_name": "SpladeEncoder.encode_documents in one process",
                    "candidate_name": f"HTTP /encode through Ray Serve, {k} doc/request, "
                    f"concurrency {args.concurrency}"
                    + (", direct ingress (no proxy)" if args.direct_ingress else ""),
                    "direct_ingress": args.direct_ingress,
                    "direct_docs_s": round(direct, 1),
                    "http_docs_s": round(http, 1),
                    "ratio": round(http / direct, 3),
                    "p50_ms": round(pct(lat, 0.5), 1),
                    "p99_ms": round(pct(lat, 0.99), 1),
                    "cpu_ms_per_doc": {n: round(v, 2) for n, v in per_doc.items()},
                    "direct_cpu_ms_per_doc": round(1000 * direct_cpu / direct_n, 2),
                    "cpu_ratio": round(cpu_ratio, 3),
                    "texts_per_model_call": round(calls, 2),
                    "encode_only_docs_s": round(len(docs) / enc_s, 1),
                    "index_docs_s": round(len(docs) / idx_s, 1),
                }
            )
        )
    finally:
        serve.shutdown()
        server.close()
        ray.shutdown()


if __name__ == "__main__":
    main()
