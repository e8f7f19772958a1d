"""NaN/inf losses: every rank agrees to skip the optimizer step, or the run stops (``train.nonfinite``).

Each micro-batch's loss (and the step's gradient norm, when clipped) is checked on the device;
the step's flag is all-reduced **on the training device** whenever a process group exists, so
all ranks take the same branch and DDP stays in sync. This costs one host sync per step (as
``torch.amp.GradScaler``'s skipped steps do). A skipped step does not call ``optimizer.step()``:
parameters and optimizer state stay as they were; the step still counts toward ``max_steps``
and the LR schedule, and its batch is consumed.

- ``skip`` (default): a warning names the step and the batch's query ids; the run's count is
  ``TrainState.nonfinite_steps`` (checkpointed, reported as the ``nonfinite_steps`` metric); the
  run stops once more than ``train.max_nonfinite_steps`` steps were skipped.
- ``stop``: :class:`NonFiniteLoss` at the first such step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

SHOWN_IDS = 16  # query ids named in a message; the rest are counted


class NonFiniteLoss(RuntimeError):
    """A NaN/inf loss under ``train.nonfinite: stop``, or more skipped steps than allowed."""


def nonfinite_flag(value: torch.Tensor) -> torch.Tensor:
    """1.0 (on ``value``'s device) when ``value`` has a NaN or inf, else 0.0; no host sync."""
    return (~torch.isfinite(value.detach())).any().to(torch.float32)


def any_rank(flag: torch.Tensor) -> bool:
    """Whether ``flag`` is non-zero on any rank: all-reduced on its own (the training) device."""
    flag = flag.clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag)
    return bool(flag.item() > 0)


def describe_queries(query_ids: Sequence[str]) -> str:
    shown = ", ".join(str(q) for q in query_ids[:SHOWN_IDS])
    more = len(query_ids) - SHOWN_IDS
    return f"[{shown}{f', ... {more} more' if more > 0 else ''}]"


def handle_nonfinite(
    train_cfg, state, *, step: int, rank: int, local: bool, query_ids: Sequence[str]
) -> None:
    """After all ranks agreed that optimizer step ``step`` had a non-finite loss: count it in
    ``state.nonfinite_steps`` and warn, or raise :class:`NonFiniteLoss` (``stop``, or over the
    limit). ``local``: whether this rank's own loss was the non-finite one (the message then
    names this rank's query ids), else another rank's loss or the gradient norm was."""
    where = (
        f"non-finite loss at step {step} on rank {rank}, queries {describe_queries(query_ids)}"
        if local
        else f"non-finite loss or gradient at step {step} (rank {rank}'s loss was finite)"
    )
    if train_cfg.nonfinite == "stop":
        raise NonFiniteLoss(f"{where}; train.nonfinite is stop")
    state.nonfinite_steps += 1
    if state.nonfinite_steps > train_cfg.max_nonfinite_steps:
        raise NonFiniteLoss(
            f"{where}; {state.nonfinite_steps} steps skipped, more than "
            f"train.max_nonfinite_steps={train_cfg.max_nonfinite_steps}"
        )
    logger.warning(
        "%s; step skipped, weights unchanged (%d skipped so far)", where, state.nonfinite_steps
    )
