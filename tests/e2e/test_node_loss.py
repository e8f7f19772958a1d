"""A spot reclaim in the middle of a training job, on the multi-node cluster (head + 2 workers).

``ray job submit`` of jobs/train.py (2 gloo workers, elastic down to 1 with ``min_workers: 1``, a
checkpoint every 3 steps, ``max_failures: 2``). The workers hold after step 5 (the test-only ``train.debug.hold_after_step``),
so the kill lands mid-run at a known step however fast the tiny steps are: the step-3 checkpoint
is registered by then (the driver's ``[train] step 3/12 ... | checkpoint`` line). The worker node
that hosts a train worker is then SIGKILLed all at once: its raylet, its agents and its Ray
workers, with no chance to clean up. A replacement node joins, as an autoscaler would start one,
and the test releases the hold (``hold_file``). Ray Train's elastic policy restarts the worker
group from the latest registered checkpoint with as many workers as fit (1 or 2; the resize
monitor is set past the run's end, so it does not grow again mid-run), the restarted run passes
step 5 without waiting, and it finishes.

Storage: ``train.output_dir`` / ``storage_path`` is a local path. All nodes run on this machine and
share its disk, so here a local path *is* shared storage; on a real cluster it is an ``s3://`` URI
(docs/storage.md), and the same restart reads the checkpoint from there.

What the test asserts is what the code controls, never timing:

- the job SUCCEEDED, its final step is exactly ``max_steps`` and the optimizer applied exactly
  ``max_steps`` updates (no step counted twice);
- the run resumed from a checkpoint: ``resumed at step N`` in the log, ``resumes >= 1`` in the
  final ``[train]`` line and in the final checkpoint's state;
- the steps lost (the highest step reported before the kill minus ``N``) are at most
  ``checkpoint.every_steps``, and the steps reported after the restart are ``N+1 .. max_steps``;
- no half checkpoint was picked up: the checkpoint resumed from, and every checkpoint Ray Train
  registered (``checkpoint_manager_snapshot.json``, what a resume can pick), is complete. Ray
  Train V2 copies a checkpoint into its final directory and registers it only after every
  worker's copy has finished, so a directory cut short by the kill is never registered;
- the exported model loads with ``SpladeEncoder.from_pretrained``.

The measured figures (steps lost, restart time, job wall time) are printed (``pytest -s``).
Restart time is measured by polling the job log about once a second.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.timeout(1200)

# SPLADERAY_LOG=debug: the test follows the Train controller's line per report (step and
# checkpoint), which the quiet console keeps in the log files (spladeray.console)
JOB_ENV = {
    "PYTHONPATH": "platform",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "SPLADERAY_LOG": "debug",
}
MAX_STEPS = 12
EVERY_STEPS = 3
NUM_WORKERS = 2
HOLD_AFTER_STEP = 5  # the workers wait there (train.debug.hold_*) until the node is killed
STEP_LINE = re.compile(rf"\[train\] step (\d+)/{MAX_STEPS}\b(.*)")
RESUMED = re.compile(r"rank \d+ resumed at step (\d+)")


def _steps(logs: str) -> list[int]:
    """The steps of the driver's ``[train] step k/max`` lines, in log order (0 = baselines)."""
    return [int(m.group(1)) for m in STEP_LINE.finditer(logs) if int(m.group(1)) > 0]


def _split_at_restart(steps: list[int]) -> tuple[list[int], list[int]]:
    """The steps reported before the restart and after it: the restart is where they drop.

    A restart that lost no step would not show as a drop; the hold after step 5 (2 steps past
    the step-3 checkpoint) makes sure this one does."""
    for i in range(1, len(steps)):
        if steps[i] <= steps[i - 1]:
            return steps[:i], steps[i:]
    return steps, []


def _poll(what: str, check, timeout: float, interval: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not seen within {timeout}s")


def _assert_complete(ckpt: Path) -> int:
    """A checkpoint directory every rank finished writing; returns the step it holds."""
    state = torch.load(ckpt / "train_state.pt", map_location="cpu", weights_only=False)
    for rank in range(state["world_size"]):
        torch.load(ckpt / f"rng_rank{rank}.pt", map_location="cpu", weights_only=False)
    assert ckpt.name == f"checkpoint_{state['state']['step']:07d}", ckpt
    return state["state"]["step"]


def test_training_survives_the_loss_of_a_worker_node(multinode_cluster, tmp_path, splade_tiny):

    from spladeray.model import SpladeEncoder

    from helpers import build_tiny_mlm, tiny_tokenizer, write_prepared

    cluster = multinode_cluster
    model = build_tiny_mlm("bert", tiny_tokenizer(splade_tiny), tmp_path / "mlm")
    data = write_prepared(tmp_path / "prepared", n_rows=16, n_neg=1)
    out = tmp_path / "out"
    release = tmp_path / "release"  # created once the node is dead: the held run may go on
    train = {
        "output_dir": str(out),  # storage_path defaults to <output_dir>/ray
        "data_dir": str(data),
        "num_workers": NUM_WORKERS,
        "min_workers": 1,  # elastic: restart with the workers that fit after the loss
        "elastic_resize_interval_s": 3600,  # no second (growing) restart within the test
        "cpus_per_worker": 1,
        "batch_size": 4,
        "num_negatives": 1,
        "max_steps": MAX_STEPS,
        "max_failures": 2,
        "max_query_length": 16,
        "max_document_length": 24,
        "log_every_steps": 1,
        "tensorboard": False,
        "checkpoint": {"every_steps": EVERY_STEPS, "num_to_keep": None},
        "debug": {"hold_after_step": HOLD_AFTER_STEP, "hold_file": str(release)},
    }
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(
        yaml.safe_dump({"run_name": "spot", "model": {"path": str(model)}, "train": train})
    )
    run_dir = out / "ray" / "spot"

    sid = cluster.submit(
        ["python", "jobs/train.py", "--config", str(cfg_path), "--no-prepare"], env_vars=JOB_ENV
    )

    def running_job():
        job = cluster.api(f"/api/jobs/{sid}")
        assert job["status"] not in {"SUCCEEDED", "FAILED", "STOPPED"}, cluster.job_logs(sid)
        return job if job.get("job_id") else None

    job_id = _poll("the job's driver", running_job, 300)["job_id"]

    def held() -> str | None:
        job = cluster.api(f"/api/jobs/{sid}")
        logs = cluster.job_logs(sid)
        assert job["status"] not in {"SUCCEEDED", "FAILED", "STOPPED"}, logs[-4000:]
        return logs if f"[train] step {HOLD_AFTER_STEP}/{MAX_STEPS}" in logs else None

    # the run is held after step 5; by then the step-3 checkpoint is registered (its line shows
    # that the controller took it) and nothing is being uploaded
    logs = _poll(f"step {HOLD_AFTER_STEP}", held, 600)
    assert f"| checkpoint checkpoint_{EVERY_STEPS:07d}" in logs, logs[-4000:]
    workers = [
        a
        for a in cluster.actors(job_id)
        if "TrainWorker" in a["class_name"] and a["state"] == "ALIVE"
    ]
    assert workers, [(a["class_name"], a["state"]) for a in cluster.actors(job_id)]
    victim = cluster.node_name(workers[0]["node_id"])
    assert victim != "head"

    # ------------------------------------------------------------- the spot reclaim
    killed = cluster.kill_node(victim)
    t_kill = time.time()
    assert len(killed) > 2  # ray start, the raylet and its agents, the train worker(s)
    steps_at_kill = _steps(cluster.job_logs(sid))
    release.touch()
    # ------------------------------------------------------------- the restart, then the end
    restart_s = None
    deadline = time.time() + 900
    with ThreadPoolExecutor(1) as pool:
        # what an autoscaler does: a new node joins in place of the lost one (in the background,
        # so that the restart's first step is seen when it happens)
        joining = pool.submit(cluster.add_worker_node)
        while True:
            job = cluster.api(f"/api/jobs/{sid}")
            logs = cluster.job_logs(sid)
            if restart_s is None and _split_at_restart(_steps(logs))[1]:
                restart_s = time.time() - t_kill
            if job["status"] in {"SUCCEEDED", "FAILED", "STOPPED"}:
                break
            assert time.time() < deadline, f"job {sid} not finished 900s after the kill"
            time.sleep(1)
        replacement = joining.result(timeout=300)
    (tmp_path / "job.log").write_text(logs)  # kept by pytest for a look after a failure
    assert job["status"] == "SUCCEEDED", (job, logs[-6000:])

    # ------------------------------------------------------------- what was lost, what resumed
    before, after = _split_at_restart(_steps(logs))
    assert before == list(range(1, len(before) + 1)), before
    assert set(steps_at_kill) <= set(before)
    resumed = sorted({int(s) for s in RESUMED.findall(logs)})
    assert len(resumed) == 1, (resumed, logs[-6000:])  # one restart, every rank at the same step
    (resumed_at,) = resumed
    # the latest checkpoint registered before the kill; the run held after HOLD_AFTER_STEP
    assert resumed_at == HOLD_AFTER_STEP // EVERY_STEPS * EVERY_STEPS
    assert before[-1] == HOLD_AFTER_STEP
    assert after == list(range(resumed_at + 1, MAX_STEPS + 1)), after
    lost = before[-1] - resumed_at
    assert 0 <= lost <= EVERY_STEPS, (before, resumed_at)

    final_line = [m for m in STEP_LINE.finditer(logs)][-1]
    assert int(final_line.group(1)) == MAX_STEPS
    assert int(re.search(r"resumes (\d+)", final_line.group(2)).group(1)) >= 1, final_line[0]
    assert f"[train] done: step {MAX_STEPS} " in logs

    # ------------------------------------------------------------- no half checkpoint was used
    assert _assert_complete(run_dir / f"checkpoint_{resumed_at:07d}") == resumed_at
    snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    registered = [r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]]
    assert f"checkpoint_{resumed_at:07d}" in registered
    assert f"checkpoint_{MAX_STEPS:07d}" in registered
    for name in registered:
        _assert_complete(run_dir / name)
    final = torch.load(
        run_dir / f"checkpoint_{MAX_STEPS:07d}" / "train_state.pt", weights_only=False
    )
    assert final["state"]["step"] == MAX_STEPS and final["state"]["resumes"] >= 1
    assert 1 <= final["world_size"] <= NUM_WORKERS  # what the elastic restart could fit
    # the optimizer applied exactly max_steps updates: the lost steps were redone, not added
    assert all(int(s["step"]) == MAX_STEPS for s in final["optimizer"]["state"].values())

    # ------------------------------------------------------------- the exported model loads
    enc = SpladeEncoder.from_pretrained(str(out / "spot" / "model"))
    vec = enc.encode_documents(["cell protein gene"])[0]
    assert vec and all(v > 0 for v in vec.values())

    # the cluster has its shape back for whatever runs next: the head + 2 worker nodes (the GCS
    # marks the lost node dead once its health checks fail)
    def reshaped() -> bool:
        alive = {n["node_id"] for n in cluster.nodes()}
        return replacement in alive and len(alive) == 3

    _poll("the head + 2 alive worker nodes", reshaped, 120)

    wall_s = (job["end_time"] - job["start_time"]) / 1000
    print(
        f"\n[node-loss] killed {victim} ({len(killed)} processes) after step {before[-1]}; "
        f"resumed at step {resumed_at}: {lost} step(s) lost (checkpoint every {EVERY_STEPS}); "
        f"restart (kill -> first step after resume, polled ~1 s): {restart_s:.1f}s; "
        f"job wall time {wall_s:.1f}s; workers after the restart: {final['world_size']}"
    )
