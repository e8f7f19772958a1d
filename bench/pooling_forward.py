"""The three ways to write the training forward of
:class:`spladeray.model.pooling.MaxPooledProjection` (max-pool over each text's tokens, with the
arg-max kept for the backward), on the same inputs, in the same run, on this machine's device
(CPU here):

- ``per_text``: one ``max(dim=0)`` per text (what CPU runs: ``PADDED_MAX_DEVICES``);
- ``padded``: the logits copied into a ``[texts, longest, vocab]`` ``-inf``-padded buffer and
  one ``max(dim=1)`` per chunk (what a GPU runs: a fixed number of kernels);
- ``scatter``: ``scatter_reduce(amax)`` then ``scatter_reduce(amin)`` over the positions that
  reach the max (what #30 first wrote; 2.2x the per-text time on CPU).

    python bench/pooling_forward.py [--hidden 768] [--dtype bfloat16]

Prints milliseconds per forward of each at growing batch sizes, the log-log slope of each in
tokens, and a ``RESULT`` line whose ratio is padded / per_text at the largest size (above 1:
per-text is the faster on this device; bench/run_all.py contract). The three must agree
exactly; the bench checks it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _env  # noqa: E402,F401  platform/ on sys.path

SIZES = ((8, 64), (32, 64), (32, 128), (64, 128))  # (texts, longest text)


def _forward(tokens, weight, lengths, padded: bool):
    """``MaxPooledProjection``'s forward with the padded pooling on or off for this device."""
    from spladeray.model import pooling

    saved = pooling.PADDED_MAX_DEVICES
    pooling.PADDED_MAX_DEVICES = (tokens.device.type,) if padded else ()
    try:
        return pooling.MaxPooledProjection.forward(_Ctx(), tokens, weight, lengths, 512)
    finally:
        pooling.PADDED_MAX_DEVICES = saved


def _scatter(tokens, weight_t, lengths, offsets):
    import torch

    logits = torch.mm(tokens, weight_t)
    vocab = logits.shape[1]
    text_of = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    rows = text_of.unsqueeze(1).expand(-1, vocab)
    best = logits.new_full((len(lengths), vocab), float("-inf"))
    best.scatter_reduce_(0, rows, logits, "amax")
    positions = torch.arange(offsets[-1]).unsqueeze(1)
    at = torch.where(logits == best.gather(0, rows), positions, offsets[-1])
    arg = torch.full((len(lengths), vocab), offsets[-1], dtype=torch.long)
    arg.scatter_reduce_(0, rows, at, "amin")
    return best, arg


def _timed(fn, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    weight = torch.randn(args.vocab, args.hidden)
    weight_t = weight.t().to(dtype)
    rows = []
    for texts, longest in SIZES:
        lengths = torch.randint(longest // 2, longest + 1, (texts,)).tolist()
        offsets = [0]
        for n in lengths:
            offsets.append(offsets[-1] + n)
        tokens = torch.randn(offsets[-1], args.hidden).to(dtype)
        ref = _forward(tokens, weight, lengths, padded=False)
        assert torch.equal(ref, _forward(tokens, weight, lengths, padded=True))
        assert torch.equal(ref, _scatter(tokens, weight_t, lengths, offsets)[0])
        times = {
            "per_text": _timed(partial(_forward, tokens, weight, lengths, False), args.repeats),
            "padded": _timed(partial(_forward, tokens, weight, lengths, True), args.repeats),
            "scatter": _timed(partial(_scatter, tokens, weight_t, lengths, offsets), args.repeats),
        }
        rows.append((offsets[-1], times))
        print(
            f"texts {texts:>3} tokens {offsets[-1]:>5}  "
            + "  ".join(f"{k} {v * 1e3:8.1f} ms" for k, v in times.items())
            + f"  padded/per_text {times['padded'] / times['per_text']:5.2f}"
            + f"  scatter/per_text {times['scatter'] / times['per_text']:5.2f}",
            flush=True,
        )
    (n0, t0), (n1, t1) = rows[0], rows[-1]
    for name in t0:
        print(
            f"log-log slope of {name} in tokens: {math.log(t1[name] / t0[name]) / math.log(n1 / n0):.2f}"
        )
    top = rows[-1][1]
    print(
        "RESULT "
        + json.dumps(
            {
                "name": "pooling_forward",
                "metric": "seconds per training forward of the max pooling",
                "baseline": round(top["padded"], 5),
                "candidate": round(top["per_text"], 5),
                "ratio": round(top["padded"] / top["per_text"], 3),
                "baseline_name": "padded max (GPU's)",
                "candidate_name": "per-text max (CPU's)",
                "scatter_over_per_text": round(top["scatter"] / top["per_text"], 3),
                "dtype": args.dtype,
            }
        )
    )


class _Ctx:
    """Stands in for autograd's context: the forward only stores on it."""

    def save_for_backward(self, *tensors) -> None:
        self.saved_tensors = tensors


if __name__ == "__main__":
    main()
