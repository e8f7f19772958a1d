"""The all-gather's backward (issue 30, item 6): each rank needs only its slice of the summed
gradient. ``reduce_scatter_tensor`` (what NCCL runs) and the all_reduce + slice fallback give
the same gradient, equal to the one-process gradient, under gloo with 2 ranks (gloo of this
torch has ``reduce_scatter_tensor``, so both paths run here)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

ROWS, COLS = 3, 5


def _weights(rank: int) -> torch.Tensor:
    """Rank ``rank``'s loss weights on the gathered ``[2 * ROWS, COLS]`` tensor."""
    return torch.arange(2 * ROWS * COLS, dtype=torch.float64).view(2 * ROWS, COLS) * (rank + 1)


def _worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from spladeray.train.losses import distributed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    result = {}
    for mode in (True, False):
        distributed.use_reduce_scatter = lambda m=mode: m  # this process only
        x = torch.full((ROWS, COLS), float(rank + 1), dtype=torch.float64, requires_grad=True)
        gathered = distributed.all_gather_with_grad(x)
        (gathered * _weights(rank)).sum().backward()
        result[mode] = (gathered.detach(), x.grad)
    torch.save(result, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_reduce_scatter_and_all_reduce_backward_agree_under_gloo(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    summed = _weights(0) + _weights(1)  # d/dx of both ranks' losses
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        for mode in (True, False):
            gathered, grad = result[mode]
            assert torch.equal(gathered[:ROWS], torch.full((ROWS, COLS), 1.0, dtype=torch.float64))
            assert torch.equal(gathered[ROWS:], torch.full((ROWS, COLS), 2.0, dtype=torch.float64))
            assert torch.equal(grad, summed[rank * ROWS : (rank + 1) * ROWS])
