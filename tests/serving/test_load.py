"""A 10-second version of bench/load.py (issue 14, item 7): mixed search / encode / index load on
the Serve app over osmem, through the benchmark's own :func:`run_load`.

Asserted: every request answered 200 (no 5xx, no client timeout, no connection error), and the
report has its figures: throughput, p50/p99 per route, statuses, the replica's RSS after
warm-up and at the end, and the drift. The 10% drift bound itself is checked by the 60-second
bench, not here: over 10 seconds on a shared CI machine, the replica is still growing its
allocator arenas and caches for the batch shapes it meets for the first time, so the figure
measures the warm-up more than a leak (see docs/serve.md, "Load").
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx
import pytest
from fixtures_osmem import serve_config, wait_healthy

APP = "spladeray-load"
PREFIX = "/load"
ROOT = Path(__file__).resolve().parents[2]


def _bench_load():
    spec = importlib.util.spec_from_file_location("bench_load", ROOT / "bench" / "load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def load_app(ray_cluster, serve_url, osmem, splade_tiny, tmp_path):
    from ray import serve

    from spladeray.serving.app import build_app

    clone = osmem.clone()
    index = {
        "backend": "opensearch",
        "name": "load",
        "opensearch": {"hosts": [clone.url], "username_env": None, "password_env": None},
    }
    cfg = serve_config(splade_tiny, tmp_path, index=index, max_documents_per_request=64)
    serve.run(build_app(cfg, check_model=False), name=APP, route_prefix=PREFIX)
    url = f"{serve_url}{PREFIX}"
    wait_healthy(url)
    try:
        yield url
    finally:
        serve.delete(APP)
        clone.close()


def test_ten_seconds_of_mixed_load_answer_200_with_the_report(load_app):
    bench = _bench_load()
    pid = httpx.get(f"{load_app}/healthz").json()["encoder"]["pid"]
    docs = bench.load_docs(32)
    report = bench.run_load(load_app, docs, lambda: [pid], duration=10.0, warmup=3.0, concurrency=4)
    bench.print_report(report)
    assert report["errors_5xx"] == 0, report["statuses"]
    assert set(report["statuses"]) == {"200"}, report["statuses"]  # no timeout, no 4xx
    assert report["ok"] == report["requests"] > 0
    assert report["throughput_rps"] > 0 and report["p50_ms"] <= report["p99_ms"]
    assert set(report["by_route"]) == {"all", "search", "encode", "index"}
    (replica,) = report["replicas"]
    assert replica["pid"] == pid and replica["rss_warm_mib"] > 0 and replica["rss_end_mib"] > 0
    assert report["rss_drift_pct"] == replica["drift_pct"] is not None
