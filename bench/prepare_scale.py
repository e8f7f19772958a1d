"""Prepare at growing corpus size: synthetic BEIR, BM25 negatives (7, depth 100), BM25 teacher.

    .venv/bin/python bench/prepare_scale.py [--sizes 10000 100000 300000] [--million]
                                            [--baseline-queries 500]

For each ``N`` (Q = N/20 queries, ``bench/_synthetic_beir.py``) the real prepare stage
(``run_prepare``, on a local Ray cluster of 4 logical CPUs) runs from the BEIR directory to the
shards. Printed per N: the seconds of each step (read, index, pipeline, total), the peak RSS of
each kind of process (driver, the BM25 index task, the miners, Ray's own), the peak of their
sum over what ran before, and the log-log slopes of wall time between sizes (1.0: linear).
``--million`` adds N = 1M (opt-in: about 20 minutes on 2 cores).

Baseline, in the same run: mining per query the way prepare did before (bm25s's
``retrieve`` with its N-length score vector per query, then ``get_scores`` again per query for
the teacher) against ``mine_rows`` + ``score_rows`` (the batched sparse product), CPU seconds on
the same BM25 index and ``--baseline-queries`` queries at N = 10k and 100k (at 10k prepare itself
still uses bm25s's path, below ``BM25S_TOPK_MAX_DOCS``; the product is measured there anyway).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: _env, _procs
import _env  # noqa: E402, F401  platform/ on sys.path, offline defaults
import _procs  # noqa: E402
from _synthetic_beir import write_beir  # noqa: E402

GIB = 1024**3
KINDS = (("NegativeMiner", "miner"), ("build_bm25", "bm25 index"), ("raylet", "raylet"))


def _kind(cmd: str) -> str:
    for key, name in KINDS:
        if key in cmd:
            return name
    if cmd.startswith("ray::"):
        return "other ray workers"
    return "ray system" if "ray" in cmd else "other"


class Sampler:
    """Samples this process and its descendants every ``every`` s: peak RSS per kind, peak sum."""

    def __init__(self, every: float = 0.5) -> None:
        self.every, self.peaks, self.peak_total = every, {}, 0
        self.cpu: dict[int, tuple[str, float]] = {}  # pid -> (kind, CPU seconds last seen)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        total = 0
        procs = {**_procs.descendants(), _procs.os.getpid(): "driver"}
        for pid, cmd in procs.items():
            rss = _procs.rss_bytes(pid) or 0
            total += rss
            kind = "driver" if cmd == "driver" else _kind(cmd)
            self.peaks[kind] = max(self.peaks.get(kind, 0), rss)
            cpu = _procs.cpu_seconds(pid)
            if cpu is not None:
                named = (
                    kind if kind not in ("other ray workers",) else self.cpu.get(pid, (kind,))[0]
                )
                self.cpu[pid] = (named, cpu)
        self.peak_total = max(self.peak_total, total)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def cpu_by_kind(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, (kind, cpu) in self.cpu.items():
            out[kind] = out.get(kind, 0.0) + cpu - self.cpu_start.get(pid, 0.0)
        return {k: round(v, 1) for k, v in sorted(out.items())}

    def __enter__(self) -> Sampler:
        self._sample()
        self.start_total = self.peak_total
        self.cpu_start = {pid: cpu for pid, (_, cpu) in self.cpu.items()}
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_one(n: int, root: Path) -> dict:
    from spladeray.config import PrepareConfig
    from spladeray.data.pipeline import run_prepare

    beir = root / f"beir_{n}"
    start = time.perf_counter()
    info = write_beir(beir, n)
    info["generate_s"] = round(time.perf_counter() - start, 1)
    cfg = PrepareConfig.model_validate(
        {
            "output_dir": str(root / f"prepared_{n}"),
            "source": {"format": "beir", "path": str(beir), "split": "train"},
            "negatives": {"method": "bm25", "num_negatives": 7, "depth": 100, "num_cpus": 1},
            "teachers": {"bm25": {"kind": "bm25"}},
            "progress": False,
        }
    )
    with Sampler() as sampler:
        start = time.perf_counter()
        result = run_prepare(cfg, force=True, echo=lambda *_: None)
        wall = time.perf_counter() - start
    rows = result.rows
    return {
        **info,
        "rows": rows,
        "wall_s": round(wall, 1),
        "steps_s": result.manifest["timings_s"],
        "peak_rss_gib": {k: round(v / GIB, 2) for k, v in sorted(sampler.peaks.items())},
        "peak_extra_gib": round((sampler.peak_total - sampler.start_total) / GIB, 2),
        "cpu_s": sampler.cpu_by_kind(),
    }


def baseline(n: int, root: Path, n_queries: int) -> dict:
    """CPU ms per query: the old per-query bm25s path vs mine_rows + score_rows, same index."""
    import numpy as np

    from spladeray.retrieval import BM25Retriever
    from spladeray.retrieval import bm25 as bm25_module

    beir = root / f"beir_{n}"
    if not beir.exists():
        write_beir(beir, n)
    with open(beir / "corpus.jsonl", encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    with open(beir / "queries.jsonl", encoding="utf-8") as fh:
        queries = [json.loads(line)["text"] for line in fh.readlines()[:n_queries]]
    BM25Retriever().index(None, texts).save(root / f"bm25_{n}")
    del texts
    bm25 = BM25Retriever.load(root / f"bm25_{n}")
    rows = [list(range(8)) for _ in queries]  # 8 candidates per query for the teacher

    def old() -> None:  # what NegativeMiner did before: retrieve, then get_scores per query
        bm25.search_rows(queries, 100)
        for q in bm25._known_terms(queries):
            if q:
                np.asarray(bm25.model.get_scores(q), np.float32)[rows[0]]

    def new() -> None:
        bm25.mine_rows(queries, 100)
        bm25.score_rows(queries, rows)

    saved = bm25_module.BM25S_TOPK_MAX_DOCS
    bm25_module.BM25S_TOPK_MAX_DOCS = 0  # the product path at every size
    try:
        times = {}
        for name, fn in (("old", old), ("new", new)):
            start = time.process_time()
            fn()
            times[name] = (time.process_time() - start) / len(queries) * 1e3
    finally:
        bm25_module.BM25S_TOPK_MAX_DOCS = saved
    return {
        "n": n,
        "old_ms_per_query": round(times["old"], 2),
        "new_ms_per_query": round(times["new"], 2),
    }


def slope(a: dict, b: dict, key: str = "wall_s") -> float:
    return math.log(b[key] / a[key]) / math.log(b["docs"] / a["docs"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 300_000])
    parser.add_argument("--million", action="store_true", help="add N = 1,000,000 (opt-in)")
    parser.add_argument("--baseline-queries", type=int, default=500)
    parser.add_argument("--baseline-sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()
    sizes = sorted(set(args.sizes + ([1_000_000] if args.million else [])))

    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    root = Path(args.work or tempfile.mkdtemp(prefix="spladeray-prepare-scale-"))
    runs = []
    for n in sizes:
        run = run_one(n, root)
        runs.append(run)
        print(f"N={n:>9,} Q={run['queries']:>7,}: {json.dumps(run)}", flush=True)
    ray.shutdown()
    for a, b in zip(runs, runs[1:], strict=False):
        print(f"log-log slope of wall time {a['docs']:,} -> {b['docs']:,}: {slope(a, b):.2f}")
    big = [r for r in runs if r["docs"] >= 100_000]
    if len(big) >= 2:
        print(f"slope {big[0]['docs']:,} -> {big[-1]['docs']:,}: {slope(big[0], big[-1]):.2f}")
    base = [baseline(n, root, args.baseline_queries) for n in args.baseline_sizes]
    for b in base:
        print(
            f"mining CPU ms/query at N={b['n']:,}: old {b['old_ms_per_query']}, new {b['new_ms_per_query']}"
        )
    if not base:
        print(json.dumps({"runs": runs}))
        return
    ref = base[-1]
    result = {
        "name": f"prepare_scale: BM25 mining + teacher per query, N={ref['n']:,}",
        "metric": "CPU ms/query",
        "baseline": ref["old_ms_per_query"],
        "candidate": ref["new_ms_per_query"],
        "ratio": round(ref["old_ms_per_query"] / ref["new_ms_per_query"], 2),
        "baseline_name": "bm25s per query (before)",
        "candidate_name": "batched sparse product",
        "runs": runs,
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
