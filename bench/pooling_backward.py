"""Where the sparse backward of :class:`spladeray.model.pooling.MaxPooledProjection` stops paying:
the sparse path (gathers + ``index_add`` over the ``K`` active entries) against the dense path
(two matmuls over a ``[tokens, vocab]`` gradient) on the same inputs, at growing density
``K / (tokens x vocab)`` (at most ``1 / length``: one active entry per (text, vocabulary) pair),
in the same run.

    python bench/pooling_backward.py [--texts 16] [--length 64] [--hidden 128] [--dtype float32]

Prints seconds per backward of each path and their ratio per density, the log-log slope of each
path's time in ``K``, and a ``RESULT`` line whose ratio is sparse / dense at the highest density
(bench/run_all.py contract). ``DENSE_BACKWARD_DENSITY`` in pooling.py is set from this crossover.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _env  # noqa: E402,F401  platform/ on sys.path

ACTIVE = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # fraction of the vocabulary active per text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    from spladeray.model import pooling

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    lengths = [args.length] * args.texts
    tokens = torch.randn(sum(lengths), args.hidden).to(dtype)
    weight = torch.randn(args.vocab, args.hidden)
    argmax = torch.randint(0, args.length, (args.texts, args.vocab))
    argmax += torch.arange(args.texts).unsqueeze(1) * args.length
    rows = []
    for active in ACTIVE:
        per_text = round(active * args.vocab)  # K = texts x per_text
        grad = torch.zeros(args.texts, args.vocab)
        for b in range(args.texts):
            grad[b, torch.randperm(args.vocab)[:per_text]] = torch.randn(per_text)
        k = int(torch.count_nonzero(grad))
        times = {}
        for name, fn in (
            (
                "sparse",
                lambda g=grad: pooling._sparse_backward(
                    g, tokens, weight, argmax, need_tokens=True, need_weight=True
                ),
            ),
            (
                "dense",
                lambda g=grad: pooling._dense_backward(
                    g, tokens, weight, argmax, lengths, 512, need_tokens=True, need_weight=True
                ),
            ),
        ):
            fn()
            samples = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
            times[name] = statistics.median(samples)
        real_density = k / (sum(lengths) * args.vocab)
        rows.append((real_density, k, times["sparse"], times["dense"]))
        print(
            f"density {real_density:8.4f}  K {k:>9,}  sparse {times['sparse'] * 1e3:8.1f} ms  "
            f"dense {times['dense'] * 1e3:8.1f} ms  sparse/dense {times['sparse'] / times['dense']:6.2f}",
            flush=True,
        )
    for i, name in ((2, "sparse"), (3, "dense")):
        (_, k0, *t0), (_, k1, *t1) = rows[0], rows[-1]
        slope = math.log(t1[i - 2] / t0[i - 2]) / math.log(k1 / k0)
        print(f"log-log slope of {name} time in K: {slope:.2f}")
    crossover = next((d for d, _, s, dn in rows if s > dn), None)
    print(f"crossover (first density where dense is faster): {crossover}")
    top = rows[-1]
    print(
        "RESULT "
        + json.dumps(
            {
                "name": "pooling_backward",
                "metric": "seconds per backward at full density",
                "baseline": round(top[2], 5),
                "candidate": round(top[3], 5),
                "ratio": round(top[2] / top[3], 3),
                "baseline_name": "sparse backward",
                "candidate_name": "dense backward",
                "crossover_density": crossover,
                "dtype": args.dtype,
            }
        )
    )


if __name__ == "__main__":
    main()
