"""Training faults, by injection: a truncated/corrupted latest checkpoint (resume falls back to the
previous good one) and NaN losses (the step is skipped on every rank, or the run stops)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.timeout(600)


def make_cfg(tmp: Path, model: Path, data: Path, **train):
    """One CPU worker, a tiny model, InfoNCE only: the smallest run that checkpoints."""
    from test_train import make_cfg as train_cfg

    small = {
        "num_workers": 1,
        "shuffle_buffer": 0,
        "checkpoint": {"every_steps": 2, "num_to_keep": 5},
        "losses": [{"name": "infonce"}],
        "tensorboard": False,
    }
    return train_cfg(tmp, model, data, **{**small, **train})


def checkpoint_dir(cfg, step: int) -> Path:
    return Path(cfg.train.output_dir) / "ray" / "t" / f"checkpoint_{step:07d}"


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------
# Checkpoint integrity (no Ray)


def save_tiny(directory: Path, step: int, *, manifest: bool = True) -> torch.nn.Module:
    from spladeray.train.checkpoint import MANIFEST_PREFIX, TrainState, save_checkpoint

    model = torch.nn.Linear(4, 3)
    torch.nn.init.constant_(model.weight, float(step))
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    save_checkpoint(
        directory,
        rank=0,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        state=TrainState(step=step),
        world_size=1,
    )
    if not manifest:  # a checkpoint written before manifests existed
        for path in directory.glob(f"{MANIFEST_PREFIX}*.json"):
            path.unlink()
    return model


def restore_into(directory: Path):
    from spladeray.train.checkpoint import load_checkpoint

    model = torch.nn.Linear(4, 3)
    state = load_checkpoint(directory, rank=0, model=model)
    return state, model


def test_a_resume_with_fewer_workers_rescales_the_data_position(tmp_path, caplog):
    """Elastic training (train.min_workers): 2 workers wrote the checkpoint 5 micro-batches each
    into the epoch; 1 worker resumes 10 micro-batches in (none skipped unseen), 3 resume 3 in."""
    from spladeray.train.checkpoint import (
        TrainState,
        load_checkpoint,
        rescale_position,
        save_checkpoint,
    )

    assert rescale_position(5, 2, 1) == 10 and rescale_position(5, 2, 3) == 3
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    state = TrainState(step=7, epoch=1, batch_in_epoch=5)
    for rank in (0, 1):  # every rank writes its RNG file; rank 0 the shared state
        save_checkpoint(
            tmp_path,
            rank=rank,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            state=state,
            world_size=2,
        )
    same = load_checkpoint(tmp_path, rank=0, model=torch.nn.Linear(4, 3), world_size=2)
    assert (same.step, same.epoch, same.batch_in_epoch) == (7, 1, 5)
    with caplog.at_level("WARNING"):
        one = load_checkpoint(tmp_path, rank=0, model=torch.nn.Linear(4, 3), world_size=1)
    assert (one.step, one.epoch, one.batch_in_epoch) == (7, 1, 10)
    assert "written by 2 workers and 1 resume it" in caplog.text


def test_manifest_detects_truncation_and_corruption_and_old_checkpoints_load(tmp_path):
    from spladeray.train.checkpoint import STATE_FILE, CheckpointCorrupt, read_checkpoint

    good = tmp_path / "good"
    saved = save_tiny(good, 3)
    state, model = restore_into(good)
    assert state.step == 3 and torch.equal(model.weight, saved.weight)

    truncated = tmp_path / "truncated"
    save_tiny(truncated, 3)
    truncate(truncated / STATE_FILE)
    with pytest.raises(CheckpointCorrupt, match="truncated"):
        read_checkpoint(truncated)

    corrupted = tmp_path / "corrupted"
    save_tiny(corrupted, 3)
    flip_a_byte(corrupted / STATE_FILE)
    with pytest.raises(CheckpointCorrupt, match="sha256"):
        read_checkpoint(corrupted)

    old = tmp_path / "old"
    save_tiny(old, 5, manifest=False)
    assert restore_into(old)[0].step == 5

    old_truncated = tmp_path / "old_truncated"
    save_tiny(old_truncated, 5, manifest=False)
    truncate(old_truncated / STATE_FILE)
    untouched = torch.nn.Linear(4, 3)
    before = untouched.weight.detach().clone()
    from spladeray.train.checkpoint import load_checkpoint

    with pytest.raises(CheckpointCorrupt, match="does not load"):
        load_checkpoint(old_truncated, rank=0, model=untouched)
    assert torch.equal(untouched.weight, before)


class _RunsCode:
    """A pickled object whose unpickling would run code (here: create a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_checkpoint_is_refused_and_its_code_never_runs(tmp_path):
    """train_state.pt and rng_rank0.pt load with weights_only=True (issue 29, item 5): a file that
    carries an arbitrary object is CheckpointCorrupt and the object's code does not run, even when
    its manifest matches (a writer of the prefix can rewrite the manifest too)."""
    import random

    import numpy as np

    from spladeray.train.checkpoint import (
        STATE_FILE,
        CheckpointCorrupt,
        load_checkpoint,
        read_checkpoint,
        rng_file,
        write_manifest,
    )

    good = tmp_path / "good"
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_tiny(good, 3)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_into(good)  # restores the RNG states saved as tensors and tuples
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(1), expected[2])

    for name in (STATE_FILE, rng_file(0)):
        bad = tmp_path / name.replace(".", "_")
        marker = tmp_path / f"ran-{name}"
        save_tiny(bad, 3)
        blob = torch.load(bad / name, weights_only=True)
        blob["payload"] = _RunsCode(marker)
        torch.save(blob, bad / name)
        write_manifest(bad, 0, [rng_file(0), STATE_FILE])  # manifest matches the crafted file
        with pytest.raises(CheckpointCorrupt, match="pickled objects is refused"):
            if name == STATE_FILE:
                read_checkpoint(bad)
            else:
                load_checkpoint(bad, rank=0, model=torch.nn.Linear(4, 3))
        assert not marker.exists()


def test_restore_falls_back_to_the_previous_good_checkpoint_with_a_warning(tmp_path, caplog):
    from spladeray.train.checkpoint import STATE_FILE, CheckpointCorrupt, restore_latest_good

    run = tmp_path / "run"
    for step in (2, 4, 6):
        save_tiny(run / f"checkpoint_{step:07d}", step)
    truncate(run / "checkpoint_0000006" / STATE_FILE)
    flip_a_byte(run / "checkpoint_0000004" / STATE_FILE)

    def load(directory: Path):
        return restore_into(directory)[0]

    with caplog.at_level(logging.WARNING):
        state = restore_latest_good(
            run / "checkpoint_0000006", "checkpoint_0000006", str(run), load
        )
    assert state.step == 2
    warning = caplog.text
    assert str(run / "checkpoint_0000006") in warning
    assert str(run / "checkpoint_0000002") in warning
    assert "checkpoint_0000004" in warning  # skipped too, and why

    truncate(run / "checkpoint_0000002" / STATE_FILE)
    with pytest.raises(CheckpointCorrupt, match="no usable checkpoint") as failed:
        restore_latest_good(run / "checkpoint_0000006", "checkpoint_0000006", str(run), load)
    for step in (2, 4, 6):
        assert f"checkpoint_{step:07d}" in str(failed.value)


def test_nonfinite_policy_counts_skips_and_stops(tmp_path, tiny_model, prepared):
    from spladeray.train.checkpoint import TrainState
    from spladeray.train.nonfinite import NonFiniteLoss, handle_nonfinite

    tc = make_cfg(tmp_path, tiny_model, prepared, max_nonfinite_steps=1).train
    state = TrainState()
    handle_nonfinite(tc, state, step=3, rank=0, local=True, query_ids=["q1", "q2"])
    assert state.nonfinite_steps == 1
    with pytest.raises(NonFiniteLoss, match=r"step 7 on rank 0, queries \[q5\].*max_nonfinite"):
        handle_nonfinite(tc, state, step=7, rank=0, local=True, query_ids=["q5"])

    stop = make_cfg(tmp_path, tiny_model, prepared, nonfinite="stop").train
    with pytest.raises(
        NonFiniteLoss, match=r"loss or gradient at step 2 \(rank 1's loss was finite\)"
    ):
        handle_nonfinite(stop, TrainState(), step=2, rank=1, local=False, query_ids=["q9"])


# ---------------------------------------------------------------------------------------------
# Injected into real runs (1 CPU worker on the local Ray cluster)


def test_corrupt_latest_checkpoint_resumes_from_the_previous_good_one(
    ray_cluster, tmp_path, tiny_model, prepared
):
    """A finished run's latest checkpoint (step 4) is truncated on disk; re-running the same name
    with more steps restores step 2 (not a crash, not step 0) and finishes."""
    from spladeray.train import run_train
    from spladeray.train.checkpoint import STATE_FILE

    first = make_cfg(tmp_path, tiny_model, prepared, max_steps=4)
    run_train(first, export=False)
    truncate(checkpoint_dir(first, 4) / STATE_FILE)

    dump = tmp_path / "dump"
    again = make_cfg(tmp_path, tiny_model, prepared, max_steps=6, debug={"dump_dir": str(dump)})
    result = run_train(again, export=False)
    assert [p.name for p in dump.iterdir()] == ["resume_step2_rank0.pt"]
    assert result.metrics["step"] == 6 and result.metrics["resumes"] == 1
    rewritten = torch.load(checkpoint_dir(again, 4) / STATE_FILE, weights_only=False)
    assert rewritten["state"]["step"] == 4  # the broken dir was written again by the resumed run


def test_nan_loss_skips_the_step_and_leaves_the_weights_unchanged(
    ray_cluster, tmp_path, tiny_model, prepared
):
    """The loss of step 2 is made NaN: the step is skipped (checkpoints of steps 1 and 2 hold
    the same parameters and optimizer state), counted in metrics, and step 3 trains again."""
    from spladeray.train import run_train
    from spladeray.train.checkpoint import STATE_FILE

    cfg = make_cfg(
        tmp_path,
        tiny_model,
        prepared,
        max_steps=3,
        checkpoint={"every_steps": 1, "num_to_keep": 5},
        debug={"nan_at_steps": [2]},
    )
    result = run_train(cfg, export=False)
    assert result.metrics["nonfinite_steps"] == 1
    assert torch.isfinite(torch.tensor(result.metrics["loss"]))
    blobs = {
        step: torch.load(checkpoint_dir(cfg, step) / STATE_FILE, weights_only=False)
        for step in (1, 2, 3)
    }
    for key, value in blobs[1]["model"].items():
        assert torch.equal(blobs[2]["model"][key], value), key
        assert torch.isfinite(blobs[3]["model"][key]).all(), key
    assert any(not torch.equal(blobs[3]["model"][k], v) for k, v in blobs[2]["model"].items())
    adam_steps = {
        s: [int(v["step"]) for v in b["optimizer"]["state"].values()] for s, b in blobs.items()
    }
    assert set(adam_steps[1]) == set(adam_steps[2]) == {1} and set(adam_steps[3]) == {2}
    assert blobs[2]["state"]["nonfinite_steps"] == 1


@pytest.mark.parametrize(
    "policy, expected",
    [
        ({"nonfinite": "stop"}, "train.nonfinite is stop"),
        ({"max_nonfinite_steps": 0}, "more than train.max_nonfinite_steps=0"),
    ],
)
def test_nan_loss_stops_the_run_naming_step_and_query_ids(
    ray_cluster, tmp_path, tiny_model, prepared, policy, expected
):
    from spladeray.train import run_train

    cfg = make_cfg(
        tmp_path, tiny_model, prepared, max_steps=3, debug={"nan_at_steps": [2]}, **policy
    )
    with pytest.raises(
        Exception, match=r"non-finite loss at step 2 on rank 0, queries \[q\d+"
    ) as e:
        run_train(cfg, export=False)
    assert expected in str(e.value)
