"""Ray Train overhead: optimizer steps/s of the real TorchTrainer loop (1 CPU worker) against a
plain PyTorch loop on the same model, data, batch, losses and threads, measured in the same run.

    python bench/train.py [--steps 30] [--batch-size 8] [--threads 2]

Both loops run ``2 * --steps`` steps and time the second half (the Ray loop reports its
steps/s over the last log interval, which is exactly that half). The plain loop reads the same
parquet with pyarrow and tokenises with the same collate step, synchronously; the Ray loop
streams it through Ray Data (tokenising in the prefetch thread). Prints a ``RESULT`` line
(bench/run_all.py contract) with ratio = Ray steps/s / plain steps/s; the target is >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: _env, _procs
import _env  # noqa: E402  platform/ on sys.path, offline defaults

ROOT = _env.ROOT


def make_config(args, data: Path, out: Path, steps: int, log_every: int):
    from spladeray.config import parse_config

    return parse_config(
        {
            "run_name": "bench_train",
            "seed": 0,
            "model": {"path": str(args.model)},
            "train": {
                "output_dir": str(out),
                "data_dir": str(data),
                "name": f"bench_{int(time.time())}",
                "num_workers": 1,
                "cpus_per_worker": args.threads,
                "batch_size": args.batch_size,
                "num_negatives": args.negatives,
                "max_steps": steps,
                "lr": 2e-5,
                "max_document_length": args.doc_length,
                "max_query_length": 32,
                "shuffle_buffer": 0,
                "log_every_steps": log_every,
                "tensorboard": False,
                "checkpoint": {"every_steps": steps * 10, "num_to_keep": 1},
                "losses": [
                    {"name": "infonce"},
                    {"name": "margin_mse", "weight": 0.1, "teacher": "ensemble"},
                ],
                "regularizer": {"query_lambda": 1e-3, "document_lambda": 1e-3},
            },
        }
    )


def plain_loop(cfg, warmup: int, steps: int, threads: int) -> float:
    """The same step in plain PyTorch on one process: steps/s over ``steps`` after ``warmup``.

    The step is the library's: the same encoder loading, collator, :class:`SpladeObjective`
    (losses + regulariser schedule) and :func:`build_optimizer` (decay / no-decay groups) as
    the TorchTrainer loop, without Ray, DDP or the reporter.
    """
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from spladeray.train.objective import SpladeObjective
    from spladeray.train.optim import build_optimizer, build_scheduler
    from spladeray.train.step import (
        PairEncoder,
        load_training_encoder,
        seed_everything,
        sparse_batch,
        training_collator,
    )

    tc = cfg.train
    torch.set_num_threads(threads)
    seed_everything(cfg.seed)
    encoder = load_training_encoder(cfg)
    model = PairEncoder(encoder)
    objective = SpladeObjective(tc, doc_only=encoder.doc_only)
    optimizer = build_optimizer(encoder, tc)
    scheduler = build_scheduler(optimizer, tc)
    collate = training_collator(encoder, tc)
    table = pq.read_table(Path(tc.data_dir) / "shards").to_pydict()
    n_rows = len(table["query"])
    b = tc.batch_size
    t0 = None
    for step in range(warmup + steps):
        if step == warmup:
            t0 = time.perf_counter()
        start = (step * b) % (n_rows - b + 1)
        rows = {k: v[start : start + b] for k, v in table.items()}
        batch = collate({k: np.array(v, dtype=object) for k, v in rows.items()})
        q, d = model(batch["query"], batch["document"])
        out = objective(sparse_batch(q, d, batch, encoder=encoder, train_cfg=tc), step)
        out.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return steps / (time.perf_counter() - t0)


def ray_loop(cfg) -> float:
    """steps/s of the last log interval of the TorchTrainer run (after the warmup report)."""
    from spladeray.train.trainer import build_trainer

    result = build_trainer(cfg).fit()
    return float(result.metrics["steps_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--model", default=str(ROOT.parent / "shared/assets/models/splade-tiny"), type=Path
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--negatives", type=int, default=1)
    parser.add_argument("--doc-length", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import ray

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        # every measured step in one epoch: an epoch boundary restarts the Ray Data stream (about
        # a second), which a real run pays once per thousands of steps, not every 8
        rows = (2 * args.steps + 1) * args.batch_size
        from spladeray.data.synthetic import write_bench_data

        data = write_bench_data(Path(tmp) / "data", rows, args.negatives)
        cfg = make_config(args, data, Path(tmp) / "out", 2 * args.steps, log_every=args.steps)
        plain = plain_loop(cfg, args.steps, args.steps, args.threads)
        print(f"plain PyTorch loop: {plain:.3f} steps/s", flush=True)
        ray.init(num_cpus=args.threads + 2, include_dashboard=False, log_to_driver=False)
        try:
            on_ray = ray_loop(cfg)
        finally:
            ray.shutdown()
    ratio = on_ray / plain
    print(f"Ray Train loop (1 CPU worker): {on_ray:.3f} steps/s")
    print(f"ratio Ray / plain = {ratio:.3f} (target >= 0.9)")
    result = {
        "name": "train",
        "metric": "optimizer steps/s",
        "baseline": round(plain, 4),
        "candidate": round(on_ray, 4),
        "ratio": round(ratio, 3),
        "baseline_name": "plain PyTorch loop",
        "candidate_name": "Ray Train TorchTrainer (1 CPU worker)",
        "batch_size": args.batch_size,
        "steps": args.steps,
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
