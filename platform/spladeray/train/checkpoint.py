"""Checkpoint layout and save/restore of the full training state.

A checkpoint directory (one per report, merged from all workers by Ray Train) holds:

- ``train_state.pt`` (rank 0): model and optimizer and scheduler state, ``step`` (optimizer
  steps done), ``epoch`` and ``batch_in_epoch`` (micro-batches of that epoch consumed: the data
  position), ``resumes`` (how many times the run restarted from a checkpoint), ``world_size``;
- ``rng_rank<R>.pt`` (every rank): Python, NumPy, torch RNG states of that rank, and the CUDA
  state of that rank's own GPU, as tensors, ints and tuples only;
- ``manifest_rank<R>.json`` (every rank, written after that rank's files): size and sha256 of
  each file the rank wrote, so a truncated or corrupted file is detected before it is loaded;
- ``model/`` (rank 0; every checkpoint, or the final one only with
  ``train.checkpoint.save_model: false``): the exported model, loadable by
  ``SpladeEncoder.from_pretrained`` and ``sentence_transformers.SparseEncoder``, so the
  checkpoint a validation sweep selects is used as it is.

:func:`read_checkpoint` checks a directory before anything is restored: every manifest's files
must be there with the recorded size and hash, and ``train_state.pt`` must load. Checkpoints
written before manifests existed have none and are checked by loading alone. A checkpoint that
fails raises :class:`CheckpointCorrupt`; :func:`restore_latest_good` then walks back to the
previous good checkpoint of the run.

**Nothing executes what it loads.** Both files are read with ``torch.load(weights_only=True)``:
tensors, numbers, strings and containers, never an arbitrary pickled object. The sha256
manifest sits beside the files, so it detects corruption, not tampering; ``weights_only`` is what
keeps a writer of the checkpoint prefix from running code on every train worker. A file holding
any other object (a checkpoint of an older spladeray, whose RNG file held NumPy arrays, or a
crafted one) is refused as :class:`CheckpointCorrupt`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pickle
import random
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spladeray import storage

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
MODEL_DIR = "model"
MANIFEST_PREFIX = "manifest_rank"
CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)")  # Ray Train dirs: checkpoint_<step:07d>


class CheckpointCorrupt(RuntimeError):
    """A checkpoint directory that cannot be restored (truncated, corrupted or incomplete)."""


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    resumes: int = 0  # restarts from a checkpoint so far (worker-group restarts and re-runs)
    nonfinite_steps: int = 0  # optimizer steps skipped for a NaN/inf loss (train.nonfinite)


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def manifest_file(rank: int) -> str:
    return f"{MANIFEST_PREFIX}{rank}.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, rank: int, names: list[str]) -> None:
    """``manifest_rank<R>.json``: size and sha256 of ``names`` (files in ``directory``).

    Written after the files it lists, so a checkpoint whose manifest is present but whose files
    do not match it was truncated or altered after (or while) it was written.
    """
    files = {
        name: {"size": (directory / name).stat().st_size, "sha256": _sha256(directory / name)}
        for name in names
    }
    (directory / manifest_file(rank)).write_text(json.dumps({"rank": rank, "files": files}))


def verify_manifests(directory: Path) -> None:
    """Raise :class:`CheckpointCorrupt` unless every file each ``manifest_rank<R>.json`` lists
    is in ``directory`` with the recorded size and sha256. No manifest (an older checkpoint)
    passes: :func:`read_checkpoint` still has to load it."""
    for manifest in sorted(directory.glob(f"{MANIFEST_PREFIX}*.json")):
        try:
            files = json.loads(manifest.read_text())["files"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointCorrupt(f"{manifest.name} is unreadable ({e})") from e
        for name, expected in files.items():
            path = directory / name
            if not path.is_file():
                raise CheckpointCorrupt(f"{name} is missing ({manifest.name} lists it)")
            size = path.stat().st_size
            if size != expected["size"]:
                raise CheckpointCorrupt(
                    f"{name} has {size} bytes, {manifest.name} recorded {expected['size']} "
                    "(truncated?)"
                )
            if _sha256(path) != expected["sha256"]:
                raise CheckpointCorrupt(f"{name} does not match its sha256 in {manifest.name}")


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Python, NumPy and torch RNG states, and on a CUDA ``device`` that device's alone.

    Only the worker's own GPU: a resume may see fewer GPUs than the run that saved (another node,
    another ``CUDA_VISIBLE_DEVICES``), and each worker draws only from its own device.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),  # (version, tuple of ints, None): loads weights_only
        # NumPy's state as a tensor, not a pickled ndarray (refused by weights_only=True)
        "numpy": (str(name), torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore :func:`rng_state`; checkpoints of older versions hold every visible GPU's state
    under ``cuda`` (a list), from which the entry of this worker's device index is taken."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
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
    """Write this rank's part of a checkpoint into ``directory``, its manifest last."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [rng_file(rank)]
    torch.save(rng_state(device), directory / rng_file(rank))
    if rank == 0:
        written.append(STATE_FILE)
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
    write_manifest(directory, rank, written)


def read_checkpoint(directory: Path) -> dict[str, Any]:
    """The verified contents of ``train_state.pt``; :class:`CheckpointCorrupt` when the
    directory fails its manifests, lacks the file, or the file does not load as weights only."""
    verify_manifests(directory)
    path = directory / STATE_FILE
    if not path.is_file():
        raise CheckpointCorrupt(f"{STATE_FILE} is missing")
    blob = _load_weights(path)
    if not isinstance(blob, dict) or not {"model", "state"} <= blob.keys():
        raise CheckpointCorrupt(f"{STATE_FILE} is not a training state")
    return blob


LOAD_ERRORS = (
    RuntimeError,
    EOFError,
    OSError,
    ValueError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
)


def _load_weights(path: Path) -> Any:
    """``torch.load(weights_only=True)``: a file with any pickled object beyond tensors and
    plain containers is refused (:class:`CheckpointCorrupt`) before any of its code can run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except LOAD_ERRORS as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointCorrupt(
            f"{path.name} does not load as weights only ({reason}); a checkpoint holding "
            "pickled objects is refused"
        ) from e


def load_checkpoint(
    directory: Path,
    *,
    rank: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    device: torch.device | None = None,
    world_size: int | None = None,
) -> TrainState:
    """Restore model/optimizer/scheduler (and this rank's RNG when present); the train state.

    The directory is verified first (:func:`read_checkpoint`): a :class:`CheckpointCorrupt`
    leaves the model and optimizer untouched. When the run resumes with another number of
    workers than wrote the checkpoint (elastic training after a node loss, ``train.min_workers``),
    ``world_size`` rescales the data position (:func:`rescale_position`); a rank that did not
    exist before keeps its freshly seeded RNG."""
    blob = read_checkpoint(directory)
    model.load_state_dict(blob["model"])
    if optimizer is not None:
        optimizer.load_state_dict(blob["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(blob["scheduler"])
    rng_path = directory / rng_file(rank)
    if rng_path.is_file():
        set_rng_state(_load_weights(rng_path), device)
    state = TrainState(**blob["state"])
    saved_world = int(blob.get("world_size", world_size or 1))
    if world_size is not None and world_size != saved_world:
        state.batch_in_epoch = rescale_position(state.batch_in_epoch, saved_world, world_size)
        logger.warning(
            "the checkpoint was written by %d workers and %d resume it (elastic): the data "
            "position becomes %d micro-batches per worker into epoch %d",
            saved_world,
            world_size,
            state.batch_in_epoch,
            state.epoch,
        )
    return state


def rescale_position(batch_in_epoch: int, saved_world: int, world: int) -> int:
    """Micro-batches per worker to skip so that ``world`` workers resume where ``saved_world``
    workers stopped: the epoch's consumed micro-batches in total, ``batch_in_epoch *
    saved_world``, shared among ``world`` workers (rounded down: a few rows may be seen twice,
    none is skipped unseen)."""
    return batch_in_epoch * saved_world // world


# ---------------------------------------------------------------------------------------------
# Resume: the latest checkpoint, else the previous good one


def checkpoint_step(name: str) -> int | None:
    """The step in a Ray Train checkpoint dir name (``checkpoint_0000042`` -> 42), else None."""
    match = CHECKPOINT_DIR.match(name)
    return int(match.group(1)) if match else None


def earlier_checkpoints(run_dir: str, before: str) -> list[str]:
    """Names of the checkpoint dirs under ``run_dir`` (a path or URI) with a lower step than the
    dir named ``before``, newest first."""
    limit = checkpoint_step(before)
    names = {rel.split("/", 1)[0] for rel in storage.list_files(run_dir) if "/" in rel}
    steps = {name: checkpoint_step(name) for name in names}
    older = [n for n, s in steps.items() if s is not None and (limit is None or s < limit)]
    return sorted(older, key=lambda n: (steps[n], n), reverse=True)


@contextlib.contextmanager
def local_checkpoint(uri: str) -> Iterator[Path]:
    """A local directory with the checkpoint at ``uri`` (itself, or a download of a remote one)."""
    if not storage.is_remote(uri):
        yield Path(storage.resolve(uri)[1])
        return
    with tempfile.TemporaryDirectory(prefix="spladeray-restore-") as tmp:
        storage.download(uri, tmp)
        yield Path(tmp)


def restore_latest_good(
    latest: Path, latest_name: str, run_dir: str, load: Callable[[Path], TrainState]
) -> TrainState:
    """``load(latest)``, or when the latest checkpoint is corrupt, ``load`` of the newest earlier
    checkpoint of the run (``run_dir``, listed through :mod:`spladeray.storage`) that verifies,
    with a warning naming both. :class:`CheckpointCorrupt` when none does: every candidate and
    why is in the message (so a restart fails the same way, it does not train from scratch)."""
    try:
        return load(latest)
    except CheckpointCorrupt as e:
        failures = [f"{latest_name}: {e}"]
    for name in earlier_checkpoints(run_dir, latest_name):
        try:
            with local_checkpoint(storage.join(run_dir, name)) as directory:
                state = load(directory)
        except (CheckpointCorrupt, storage.StorageError) as e:
            failures.append(f"{name}: {e}")
            continue
        logger.warning(
            "latest checkpoint %s is unusable; resuming from the previous good checkpoint %s "
            "(step %d). Skipped: %s",
            storage.join(run_dir, latest_name),
            storage.join(run_dir, name),
            state.step,
            "; ".join(failures),
        )
        return state
    raise CheckpointCorrupt(
        f"no usable checkpoint in {run_dir}: " + "; ".join(failures) + ". Delete the broken "
        "checkpoint dirs, or train under a new train.name"
    )
