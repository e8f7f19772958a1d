"""Test-only hooks of ``train.debug``: injected failures, a hold mid-run, a record of every
collective.

Leave ``train.debug`` empty in real runs.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

# every torch.distributed collective the training step may call (losses, metrics, DDP helpers)
COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
    "broadcast",
    "reduce",
)

_ORIGINALS: dict = {}  # the unwrapped collectives, so a second call does not wrap twice


class InjectedFailure(RuntimeError):
    """Raised by the test-only ``train.debug.fail_at_step`` hook."""


def maybe_fail(debug, step: int, rank: int, marker_root: str | Path) -> None:
    """Raise :class:`InjectedFailure` after ``debug.fail_at_step`` on ``debug.fail_rank``, at most
    ``debug.fail_times`` times over all attempts (counted by marker files under ``marker_root``,
    a path or URI that every attempt sees)."""
    from spladeray import storage

    if debug.fail_at_step != step or debug.fail_rank != rank:
        return
    fired = (
        [f for f in storage.list_files(marker_root) if f.startswith("failure_")]
        if storage.exists(marker_root)
        else []
    )
    if len(fired) >= debug.fail_times:
        return
    storage.write_text(
        storage.join(marker_root, f"failure_{len(fired)}"), f"step {step} rank {rank}\n"
    )
    raise InjectedFailure(f"injected failure at step {step} on rank {rank} (train.debug)")


def maybe_hold(debug, step: int, timeout_s: float = 600) -> None:
    """After ``debug.hold_after_step``, wait until ``debug.hold_file`` exists (at most
    ``timeout_s``). A node-loss test kills a node while the run is held there, so the kill lands
    mid-run at a known step however fast the steps are; it then creates the file, and the
    restarted run passes the same step without waiting."""
    if debug.hold_after_step != step or debug.hold_file is None:
        return
    deadline = time.monotonic() + timeout_s
    while not Path(debug.hold_file).exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for item in value for t in _tensors(item)]
    return []


def record_collectives(log_dir: Path, rank: int, device: torch.device) -> None:
    """Wrap the :data:`COLLECTIVES` of ``torch.distributed`` in this process.

    Every call appends ``{"op", "rank", "devices", "expected"}`` (the devices of the tensors it
    got, and the training ``device``) to ``<log_dir>/rank<R>_<pid>.jsonl``, then runs the
    collective. NCCL reduces only CUDA tensors, so on a GPU any device other than ``expected``
    would fail; the record lets a CPU (gloo) test check the same rule.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"rank{rank}_{os.getpid()}.jsonl"

    def wrap(name: str, collective):
        @functools.wraps(collective)
        def recorded(*args, **kwargs):
            tensors = _tensors(list(args) + list(kwargs.values()))
            record = {
                "op": name,
                "rank": rank,
                "devices": sorted({str(t.device) for t in tensors}),
                "expected": str(device),
            }
            with path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            return collective(*args, **kwargs)

        return recorded

    for name in COLLECTIVES:
        original = _ORIGINALS.setdefault(name, getattr(dist, name))
        setattr(dist, name, wrap(name, original))


def read_collective_log(log_dir: Path) -> list[dict]:
    """All records :func:`record_collectives` wrote under ``log_dir``."""
    return [
        json.loads(line)
        for path in sorted(Path(log_dir).glob("rank*.jsonl"))
        for line in path.read_text().splitlines()
        if line
    ]
