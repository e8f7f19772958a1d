"""The training step's vocabulary projection: spladeray's sparse-backward max pooling
(:class:`spladeray.model.pooling.MaxPooledProjection`) against plain autograd over the same
chunked logits (``mm`` then ``amax``, which stores every ``[tokens, vocab]`` chunk and runs two
dense backward matmuls), in the same run, on the same model and batch.

    python bench/train_step.py [--docs 64] [--doc-length 128] [--steps 4] [--threads 2]

One "step" = encode 16 queries and ``--docs`` documents of SciFact with splade-tiny in training
mode, InfoNCE, backward. Prints a ``RESULT`` line (bench/run_all.py contract): ratio = plain
seconds per step / spladeray seconds per step; also the peak memory of each side, measured in a
fresh process.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: _env, _procs
import _env  # noqa: E402  platform/ on sys.path, offline defaults

ROOT = _env.ROOT


def plain_autograd(tokens, weight, lengths, chunk_tokens):
    """The baseline: the same projection (one text per chunk), differentiated by autograd."""
    import torch

    rows, start = [], 0
    for n in lengths:
        rows.append(torch.mm(tokens[start : start + n], weight.t()).amax(dim=0))
        start += n
    return torch.stack(rows)


def build(args):
    import torch

    from spladeray.data.beir import doc_text, iter_corpus, load_queries
    from spladeray.model.loading import load_encoder
    from spladeray.paths import asset
    from spladeray.train.losses import InfoNCELoss, SparseBatch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    beir = asset("beir", "scifact")
    enc = load_encoder(str(asset("models", "splade-tiny"))).train()
    docs = [doc_text(d) for d in iter_corpus(beir, limit=args.docs)]
    queries = list(load_queries(beir).values())[:16]
    q_feats = enc.tokenize(queries, "query")
    d_feats = {k: v[:, : args.doc_length] for k, v in enc.tokenize(docs, "document").items()}
    loss_fn = InfoNCELoss()
    negatives = (args.docs - 16) // 16

    def step() -> None:
        q = enc.encode_tensors(q_feats, "query")
        d = enc.encode_tensors(d_feats, "document")
        batch = SparseBatch(
            queries=q,
            positives=d[:16],
            negatives=d[16 : 16 + 16 * negatives].view(16, negatives, -1),
        )
        loss_fn(batch).backward()
        enc.zero_grad(set_to_none=True)

    return step


def use_side(side: str) -> None:
    """Route training-mode pooling through plain autograd (baseline) or keep ours."""
    from spladeray.model import pooling

    if side == "plain":
        pooling.MaxPooledProjection.apply = staticmethod(plain_autograd)


def seconds_per_step(args, side: str) -> float:
    use_side(side)
    step = build(args)
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    return (time.perf_counter() - t0) / args.steps


def _child(args) -> None:
    side = args.child
    print(json.dumps({"seconds": seconds_per_step(args, side)}))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak}))


def run_child(args, side: str) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            side,
            "--docs",
            str(args.docs),
            "--doc-length",
            str(args.doc_length),
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout
    result: dict = {}
    for line in out.splitlines():
        if line.startswith("{"):
            result.update(json.loads(line))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=64, help="documents per step (16 queries)")
    parser.add_argument("--doc-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=["plain", "spladeray"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    # each side in a fresh process (fair peak memory), interleaved twice against machine noise
    runs = {"plain": [], "spladeray": []}
    peaks = {}
    for _ in range(2):
        for side in runs:
            r = run_child(args, side)
            runs[side].append(r["seconds"])
            peaks[side] = max(peaks.get(side, 0.0), r["peak_rss_mb"])
            print(
                f"{side}: {r['seconds']:.2f} s/step, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True
            )
    plain, ours = min(runs["plain"]), min(runs["spladeray"])
    print(
        "RESULT "
        + json.dumps(
            {
                "name": "train step (vocabulary projection backward)",
                "metric": "s/step",
                "baseline": round(plain, 3),
                "candidate": round(ours, 3),
                "ratio": round(plain / ours, 3),
                "baseline_name": "autograd over chunked logits (mm + amax)",
                "candidate_name": "MaxPooledProjection (sparse backward)",
                "docs_per_step": args.docs,
                "doc_length": args.doc_length,
                "peak_rss_mb": {
                    "baseline": round(peaks["plain"]),
                    "candidate": round(peaks["spladeray"]),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
