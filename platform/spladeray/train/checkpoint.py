"""Checkpoint layout and save/restore of the full training state.

A checkpoint directory (one per report, merged from all workers by Ray Train) holds:

- ``train_state.pt`` (rank 0): model and optimizer and scheduler state, ``step`` (optimizer
  steps done), ``epoch`` and ``batch_in_epoch`` (micro-batches of that epoch consumed: the data
  position), ``resumes`` (how many times the run restarted from a checkpoint), ``world_size``;
- ``rng_rank<R>.pt`` (every rank): Python, NumPy, torch RNG states of that rank, and the CUDA
  state of that rank's own GPU;
- ``model/`` (final checkpoint only): the exported model, loadable by
  ``SpladeEncoder.from_pretrained`` and ``sentence_transformers.SparseEncoder``.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "train_state.pt"
MODEL_DIR = "model"


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    resumes: int = 0  # restarts from a checkpoint so far (worker-group restarts and re-runs)


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Python, NumPy and torch RNG states, and on a CUDA ``device`` that device's alone.

    Only the worker's own GPU: a resume may see fewer GPUs than the run that saved (another node,
    another ``CUDA_VISIBLE_DEVICES``), and each worker draws only from its own device.
    """
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore :func:`rng_state`; checkpoints of older versions hold every visible GPU's state
    under ``cuda`` (a list), from which the entry of this worker's device index is taken."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device is None or device.type != "cuda":
        return
    if "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"], device)
    elif "cuda" in state:
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index < len(state["cuda"]):
            torch.cuda.set_rng_state(state["cuda"][index], device)


def save_checkpoint(
    directory: Path,
    *,
    rank: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainState,
    world_size: int,
    device: torch.device | None = None,
) -> None:
    """Write this rank's part of a checkpoint into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(device), directory / rng_file(rank))
    if rank == 0:
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "state": asdict(state),
                "world_size": world_size,
            },
            directory / STATE_FILE,
        )


def load_checkpoint(
    directory: Path,
    *,
    rank: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    device: torch.device | None = None,
) -> TrainState:
    """Restore model/optimizer/scheduler (and this rank's RNG when present); the train state."""
    blob = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=False)
    model.load_state_dict(blob["model"])
    if optimizer is not None:
        optimizer.load_state_dict(blob["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(blob["scheduler"])
    rng_path = directory / rng_file(rank)
    if rng_path.is_file():
        set_rng_state(torch.load(rng_path, map_location="cpu", weights_only=False), device)
    return TrainState(**blob["state"])
