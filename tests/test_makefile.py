"""The seed projects' workflow targets: one-line wrappers over the jobs, listed in ``make help``."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from helpers import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")

TARGETS = {
    "train": "jobs/train.py --config configs/x.yaml",
    "train-resume": "jobs/train.py --config configs/x.yaml --no-prepare --set train.name=r1",
    "sweep": "jobs/sweep.py --config configs/x.yaml --sweep configs/sweeps/demo.yaml",
    "tensorboard": "tensorboard --logdir runs --host 127.0.0.1 --port 6006",
    "benchmark": "jobs/evaluate.py --config configs/x.yaml",
    "export-hf": "jobs/export.py --config configs/x.yaml --format hf",
    "logs": "ray job logs --follow raysubmit_1",
}


def _make(*args: str) -> str:
    out = subprocess.run(
        ["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_help_lists_the_workflow_targets():
    listed = {line.split()[0] for line in _make("help").splitlines() if line.strip()}
    assert set(TARGETS) <= listed


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_target_wraps_its_job_with_config(target):
    # -n: print the commands only; -W: treat the venv as built, so only the wrapper is printed
    dry = _make(
        "-n",
        "-W",
        ".venv/.installed",
        target,
        "CONFIG=configs/x.yaml",
        "RUN=r1",
        "JOB=raysubmit_1",
    )
    assert TARGETS[target] in dry, dry
    assert "ray job list" in _make("-n", "-W", ".venv/.installed", "logs", "JOB=")
