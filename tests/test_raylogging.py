"""spladeray.raylogging: Ray Train's placement-group cleaner warning is let through once per
interval, its other messages always; the hook reaches worker processes without spladeray."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from spladeray import raylogging
from spladeray.raylogging import (
    CLEANER_LOGGER,
    REPEATED_WARNING,
    RepeatFilter,
    quiet_ray_train_logs,
    worker_runtime_env,
    worker_setup,
)

# the message as ray/train/v2/_internal/execution/controller/placement_group_cleaner.py logs it
WARNING = (
    "Failed to query Ray Train Controller actor state. "
    "State API may be temporarily unavailable. Continuing to monitor."
)


@pytest.fixture
def cleaner_logger():
    logger = logging.getLogger(CLEANER_LOGGER)
    saved = list(logger.filters)
    yield logger
    logger.filters[:] = saved


def test_repeats_pass_once_per_interval_with_the_count(cleaner_logger, caplog, monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 3.0, 700.0])
    monkeypatch.setattr(raylogging.time, "monotonic", lambda: next(clock))
    quiet_ray_train_logs()
    quiet_ray_train_logs()  # idempotent: a second call adds no second filter
    assert sum(isinstance(f, RepeatFilter) for f in cleaner_logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger=CLEANER_LOGGER):
        for _ in range(4):
            cleaner_logger.warning(WARNING)
        cleaner_logger.warning("Detected that the Ray Train controller actor (x) is dead.")
        cleaner_logger.warning(WARNING)  # 700 s after the first
    assert [r.getMessage() for r in caplog.records] == [
        WARNING,
        "Detected that the Ray Train controller actor (x) is dead.",
        f"{WARNING} (3 more not shown)",
    ]


def test_the_hook_is_a_runtime_env_unless_the_submitted_job_has_one(monkeypatch):
    assert REPEATED_WARNING in WARNING
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert worker_runtime_env() == {"worker_process_setup_hook": worker_setup}
    job = {"runtime_env": {"worker_process_setup_hook": "their.hook"}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    assert worker_runtime_env() == {}


def test_the_hook_pickles_by_value():
    """A worker runs the hook without importing spladeray (blocked in the child process)."""
    import ray.cloudpickle

    worker_runtime_env()
    blob = ray.cloudpickle.dumps(worker_setup)
    code = (
        "import logging, pickle, sys; sys.modules['spladeray'] = None; "
        f"pickle.loads({blob!r})(); "
        f"print(logging.getLogger({CLEANER_LOGGER!r}).filters[0].prefix)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == REPEATED_WARNING
