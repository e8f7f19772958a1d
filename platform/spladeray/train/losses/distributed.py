"""Differentiable collectives used by the losses (no-ops without an initialised process group).

``all_gather_with_grad`` and ``all_reduce_with_grad`` return the same values as the plain
``torch.distributed`` collectives, and their backward sums the incoming gradients over ranks (the
adjoint of "every rank receives a copy"). With DDP's gradient averaging (divide by world size)
the resulting parameter gradient is exactly the gradient of the *mean of the per-rank losses*,
i.e. of one big batch on one device. Plain ``torch.distributed.nn.functional.all_gather`` uses
reduce-scatter / all-to-all in backward, which gloo lacks; these use only all_reduce and
all_gather, so they work on gloo (CPU) and NCCL alike.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank = dist.get_rank()
        ctx.size = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.size
        return grad[start : start + ctx.size]


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (same shape on every rank) over ranks along dim 0, rank order."""
    return _AllGather.apply(tensor) if is_distributed() else tensor


def all_reduce_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks."""
    return _AllReduceSum.apply(tensor) if is_distributed() else tensor
