"""Step schedules: the regulariser's quadratic warmup and the learning rate.

Regulariser weight at optimizer step ``t`` (SPLADE v2)::

    lambda_t = lambda * min(1, (t / T)^2)          (T = 0 means lambda from the start)

Learning rate multiplier: linear warmup over ``warmup`` steps, then linear decay to 0 at
``total`` (or constant).
"""

from __future__ import annotations

from collections.abc import Callable


def quadratic_warmup(lam: float, step: int, warmup_steps: int) -> float:
    """``lambda * min(1, (step / T)^2)``."""
    if warmup_steps <= 0:
        return float(lam)
    return float(lam) * min(1.0, (step / warmup_steps) ** 2)


def lr_multiplier(warmup: int, total: int, decay: str = "linear") -> Callable[[int], float]:
    """For ``torch.optim.lr_scheduler.LambdaLR``: the multiplier at scheduler step ``s``."""

    def fn(s: int) -> float:
        if warmup > 0 and s < warmup:
            return (s + 1) / warmup
        if decay == "constant":
            return 1.0
        return max(0.0, (total - s) / max(1, total - warmup))

    return fn
