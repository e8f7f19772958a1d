"""The embedded index at growing N: bulk add, memory, first search, exact and Seismic latency.

    python bench/index_scale.py                 # 10k, 100k, 300k documents
    python bench/index_scale.py --full          # and 1M (opt-in: ~10 min, ~3 GiB)
    python bench/index_scale.py --sizes 20000   # any sizes

Synthetic SPLADE-like vectors, no model: token ranks drawn from a Zipf law (s = 1) over the
30,522 BERT word pieces, ~140 distinct tokens per document and ~25 per query; a weight is
lognormal times an IDF-like factor (common tokens weigh less, as SPLADE learns them). Each size
runs in its own subprocess (its peak RSS is its own) and goes through the public ``LocalIndex``
API, as the bulk job does:

- bulk add in batches of 1,000 (time series at every tenth), peak RSS after it;
- the first search on the writer's index, and a cold open + first search in a fresh one;
- exact search: p50/p99 of 1 query, and of a batch of 32 (per batch);
- a search right after one more 1,000-document write, against the same query before it;
- Seismic (``search="seismic"``): build time (its first search), RSS growth, p50, recall@10
  against exact;
- the baseline, measured in the same run on the same data: scipy CSR brute force
  (``D @ q`` for every document + ``argpartition``), p50 of 1 query.

Times are wall clock and CPU seconds of the process (``time.process_time``): on a shared
machine the CPU figures are what the work costs, the wall figures what a user waited.

It prints a table, log-log slopes between sizes and ``RESULT`` lines for bench/run_all.py
(exact p50 against the brute force, at the largest size).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 30_522
DOC_DRAWS = 185  # Zipf draws per document: ~140 distinct tokens after duplicates
QUERY_TOKENS = 25
BATCH = 1000
# Seismic's default n_postings (3500) clusters 5,250 postings into 525 blocks in every long
# list; this corpus's Zipf head has hundreds of such lists, which took minutes per 10k documents
# on this 2-core machine. 1,000 postings per list keeps the build in proportion.
SEISMIC = {"n_postings": 1000}


def _rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Corpus:
    """Deterministic synthetic vectors: batch ``b`` is the same whenever it is generated."""

    def __init__(self, seed: int = 0) -> None:
        p = 1.0 / np.arange(1, VOCAB + 1)
        self.cdf = np.cumsum(p / p.sum())
        self.idf = 0.3 + np.log1p(np.arange(VOCAB)) / np.log1p(VOCAB)  # rank 0 is most common
        self.tokens = np.array([f"t{i}" for i in range(VOCAB)], dtype=object)
        self.seed = seed

    def _rows(self, rng, n: int, draws: int) -> list[tuple[np.ndarray, np.ndarray]]:
        ranks = np.minimum(np.searchsorted(self.cdf, rng.random((n, draws))), VOCAB - 1)
        out = []
        for row in ranks:
            cols = np.unique(row)
            weights = rng.lognormal(0.0, 0.5, cols.size) * self.idf[cols]
            out.append((cols, weights.astype(np.float32)))
        return out

    def batch_arrays(self, b: int, n: int = BATCH) -> list[tuple[np.ndarray, np.ndarray]]:
        return self._rows(np.random.default_rng((self.seed, b)), n, DOC_DRAWS)

    def batch(self, b: int, n: int = BATCH) -> tuple[list[str], list[dict[str, float]]]:
        ids = [f"d{b * BATCH + i}" for i in range(n)]
        vecs = [
            dict(zip(self.tokens[c].tolist(), w.tolist(), strict=True))
            for c, w in self.batch_arrays(b, n)
        ]
        return ids, vecs

    def queries(self, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        rng = np.random.default_rng((self.seed, 10**9))
        out = []
        while len(out) < n:
            cols = np.unique(np.searchsorted(self.cdf, rng.random(QUERY_TOKENS * 3)))[:QUERY_TOKENS]
            cols = np.minimum(cols, VOCAB - 1)
            out.append((cols, (rng.lognormal(0.0, 0.5, cols.size) * self.idf[cols])))
        return out

    def query_dicts(self, n: int) -> list[dict[str, float]]:
        return [
            dict(zip(self.tokens[c].tolist(), w.tolist(), strict=True)) for c, w in self.queries(n)
        ]


def _cpu() -> float:
    """CPU seconds of this process (all threads): on a shared machine, what the work costs."""
    return time.process_time()


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def run_one(n: int, n_queries: int, seismic: dict | None) -> dict:
    """One size, in this process: every figure of the table for ``n`` documents."""
    sys.path.insert(0, str(ROOT / "platform"))
    from spladeray.index import LocalIndex

    corpus = Corpus()
    out: dict = {"docs": n}
    with tempfile.TemporaryDirectory(prefix="index-scale-", dir=os.environ.get("BENCH_TMP")) as d:
        index = LocalIndex(d)
        series, spent, cpu = [], 0.0, 0.0
        batches = math.ceil(n / BATCH)
        for b in range(batches):
            ids, vecs = corpus.batch(b, min(BATCH, n - b * BATCH))
            start, start_cpu = time.perf_counter(), _cpu()
            res = index.add("bench", ids, vecs)
            spent += time.perf_counter() - start
            cpu += _cpu() - start_cpu
            assert not res.failed
            if (b + 1) % max(1, batches // 10) == 0 or b == batches - 1:
                series.append([(b + 1) * BATCH, round(spent, 2), round(cpu, 2)])
        out["add_s"] = round(spent, 2)
        out["add_cpu_s"] = round(cpu, 2)
        out["add_series"] = series
        out["segments"] = len(index.segment_sizes("bench"))
        out["peak_rss_add_mib"] = round(_rss_peak() / 2**20)
        queries = corpus.query_dicts(n_queries)

        start = time.perf_counter()
        index.search("bench", queries[0], 10)
        out["first_search_s"] = round(time.perf_counter() - start, 3)
        cold = LocalIndex(d)
        start = time.perf_counter()
        cold.search("bench", queries[0], 10)
        out["cold_open_first_search_s"] = round(time.perf_counter() - start, 3)
        del cold

        lat1, cpu1 = [], []
        exact = []
        for q in queries:
            start, start_cpu = time.perf_counter(), _cpu()
            exact.append(index.search("bench", q, 10))
            lat1.append(time.perf_counter() - start)
            cpu1.append(_cpu() - start_cpu)
        out["exact_p50_ms"], out["exact_p99_ms"] = _pct(lat1, 50), _pct(lat1, 99)
        out["exact_cpu_p50_ms"] = _pct(cpu1, 50)
        lat32 = []
        for i in range(0, n_queries - 31, 32):
            start = time.perf_counter()
            index.search_many("bench", queries[i : i + 32], 10)
            lat32.append(time.perf_counter() - start)
        out["exact32_p50_ms"], out["exact32_p99_ms"] = _pct(lat32, 50), _pct(lat32, 99)

        # a search right after a 1,000-document write, against the same queries before it
        probe = queries[:20]
        before = []
        for q in probe:
            start = time.perf_counter()
            index.search("bench", q, 10)
            before.append(time.perf_counter() - start)
        ids, vecs = corpus.batch(batches + 1)
        index.add("bench", ids, vecs)
        start = time.perf_counter()
        index.search("bench", probe[0], 10)
        after = time.perf_counter() - start
        out["search_before_write_ms"] = round(float(np.median(before)) * 1000, 2)
        out["search_after_write_ms"] = round(after * 1000, 2)
        out["after_write_ratio"] = round(after / float(np.median(before)), 2)
        out["peak_rss_mib"] = round(_rss_peak() / 2**20)
        index.delete_documents("bench", ids)  # back to n documents: Seismic and the baseline

        if seismic:
            approx = LocalIndex(d, search="seismic", seismic=seismic)
            rss0 = _rss_now()
            start, start_cpu = time.perf_counter(), _cpu()
            approx.search("bench", queries[0], 10)
            out["seismic_build_s"] = round(time.perf_counter() - start, 2)
            out["seismic_build_cpu_s"] = round(_cpu() - start_cpu, 2)
            out["seismic_rss_mib"] = round((_rss_now() - rss0) / 2**20)
            lat, recall, cpu_s = [], [], []
            for q, want in zip(queries, exact, strict=True):
                start, start_cpu = time.perf_counter(), _cpu()
                got = approx.search("bench", q, 10)
                lat.append(time.perf_counter() - start)
                cpu_s.append(_cpu() - start_cpu)
                recall.append(len({h.id for h in got} & {h.id for h in want}) / max(len(want), 1))
            out["seismic_p50_ms"], out["seismic_p99_ms"] = _pct(lat, 50), _pct(lat, 99)
            out["seismic_cpu_p50_ms"] = _pct(cpu_s, 50)
            out["seismic_recall10"] = round(float(np.mean(recall)), 4)
            del approx

    out["baseline_p50_ms"], out["baseline_cpu_p50_ms"] = baseline(corpus, n, n_queries)
    return out


def baseline(corpus: Corpus, n: int, n_queries: int) -> tuple[float, float]:
    """scipy CSR brute force over the same documents: ``D @ q`` then ``argpartition``."""
    import scipy.sparse as sp

    indptr, cols, data = [0], [], []
    for b in range(math.ceil(n / BATCH)):
        for c, w in corpus.batch_arrays(b, min(BATCH, n - b * BATCH)):
            cols.append(c.astype(np.int32))
            data.append(w)
            indptr.append(indptr[-1] + c.size)
    docs = sp.csr_matrix((np.concatenate(data), np.concatenate(cols), indptr), (n, VOCAB))
    lat, cpu = [], []
    for c, w in corpus.queries(n_queries):
        q = np.zeros(VOCAB, dtype=np.float32)
        q[c] = w
        start, start_cpu = time.perf_counter(), _cpu()
        scores = docs @ q
        top = np.argpartition(-scores, 9)[:10]
        top[np.argsort(-scores[top])]
        lat.append(time.perf_counter() - start)
        cpu.append(_cpu() - start_cpu)
    return _pct(lat, 50), _pct(cpu, 50)


def _slope(xs, ys) -> float | None:
    if len(xs) < 2 or min(ys) <= 0:
        return None
    return round(float(np.polyfit(np.log(xs), np.log(ys), 1)[0]), 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 300_000])
    parser.add_argument("--full", action="store_true", help="also 1,000,000 documents")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--no-seismic", action="store_true")
    parser.add_argument(
        "--seismic",
        default=json.dumps(SEISMIC),
        help="Seismic build/search parameters (JSON), as index.seismic in the config",
    )
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    if args.one:
        seismic = None if args.no_seismic else json.loads(args.seismic)
        print("JSON " + json.dumps(run_one(args.one, args.queries, seismic)))
        return 0
    sizes = sorted(set(args.sizes + ([1_000_000] if args.full else [])))
    rows = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--queries", str(args.queries)]
        cmd += ["--no-seismic"] if args.no_seismic else ["--seismic", args.seismic]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("JSON ")), None)
        if proc.returncode or line is None:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            return 1
        rows.append(json.loads(line[5:]))
        print(json.dumps(rows[-1]), flush=True)
    _report(rows)
    return 0


def _report(rows: list[dict]) -> None:
    cols = [
        ("docs", "docs"),
        ("add_s", "add s"),
        ("add_cpu_s", "add CPU s"),
        ("segments", "segs"),
        ("peak_rss_mib", "peak RSS MiB"),
        ("first_search_s", "1st search s"),
        ("cold_open_first_search_s", "cold open+search s"),
        ("exact_p50_ms", "exact p50 ms"),
        ("exact_p99_ms", "p99"),
        ("exact_cpu_p50_ms", "exact CPU p50 ms"),
        ("exact32_p50_ms", "32q p50 ms"),
        ("after_write_ratio", "after/before write"),
        ("seismic_build_s", "seismic build s"),
        ("seismic_rss_mib", "seismic RSS MiB"),
        ("seismic_build_cpu_s", "build CPU s"),
        ("seismic_p50_ms", "seismic p50 ms"),
        ("seismic_cpu_p50_ms", "seismic CPU p50 ms"),
        ("seismic_recall10", "recall@10"),
        ("baseline_p50_ms", "brute force p50 ms"),
        ("baseline_cpu_p50_ms", "brute force CPU p50 ms"),
    ]
    print("\n| " + " | ".join(h for _, h in cols) + " |")
    print("|" + "---:|" * len(cols))
    for r in rows:
        cells = [r.get(k) for k, _ in cols]
        print(
            "| " + " | ".join(f"{c:.2f}" if isinstance(c, float) else str(c) for c in cells) + " |"
        )
    for r in rows:
        print(f"add series (docs, cumulative s, CPU s) at {r['docs']}: {r['add_series']}")
    xs = [r["docs"] for r in rows]
    keys = ("add_s", "add_cpu_s", "peak_rss_mib", "exact_p50_ms", "exact_cpu_p50_ms")
    keys += ("seismic_p50_ms", "seismic_cpu_p50_ms", "baseline_p50_ms", "baseline_cpu_p50_ms")
    for key in keys:
        if all(key in r for r in rows):
            ys = [r[key] for r in rows]
            pairs = [
                f"{a}->{b}: {_slope([a, b], [ya, yb])}"
                for a, b, ya, yb in zip(xs, xs[1:], ys, ys[1:], strict=False)
            ]
            print(f"log-log slope of {key}: overall {_slope(xs, ys)}; " + ", ".join(pairs))
    big = rows[-1]
    result = {
        "name": f"index_scale exact search ({big['docs']:,} docs)",
        "metric": "p50 ms, 1 query of 25 tokens",
        "baseline": round(big["baseline_p50_ms"], 2),
        "candidate": round(big["exact_p50_ms"], 2),
        "ratio": round(big["baseline_p50_ms"] / big["exact_p50_ms"], 2),
        "baseline_name": "scipy CSR D @ q + argpartition",
        "candidate_name": (
            f"LocalIndex exact (add {big['add_s']} s, peak RSS {big['peak_rss_mib']} MiB, "
            f"Seismic p50 {big.get('seismic_p50_ms', float('nan')):.2f} ms "
            f"recall@10 {big.get('seismic_recall10')})"
        ),
        "add_slope": _slope(xs, [r["add_s"] for r in rows]),
        "add_cpu_slope": _slope(xs, [r["add_cpu_s"] for r in rows]),
        "cpu_ratio": round(big["baseline_cpu_p50_ms"] / max(big["exact_cpu_p50_ms"], 1e-9), 2),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
