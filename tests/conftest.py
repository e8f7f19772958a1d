"""Shared fixtures: offline assets, tiny models built in the test, one local Ray cluster.

Stage-specific fixtures live in ``tests/fixtures_*.py`` and are registered in ``pytest_plugins``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import teardown  # noqa: E402  (tests/ is on sys.path from here)

pytest_plugins: list[str] = ["fixtures_osmem", "fixtures_s3", "fixtures_cluster"]


@pytest.fixture(scope="session")
def assets() -> Path:
    from spladeray.paths import assets_root

    root = assets_root()
    if not (root / "models" / "splade-tiny").is_dir():
        pytest.fail(f"offline assets not found at {root}; set SPLADERAY_ASSETS")
    return root


@pytest.fixture(scope="session")
def splade_tiny(assets: Path) -> Path:
    return assets / "models" / "splade-tiny"


@pytest.fixture(scope="session")
def scifact(assets: Path) -> Path:
    return assets / "beir" / "scifact"


@pytest.fixture(autouse=True)
def _console_state_is_per_test():
    """A test that runs a job in-process (``runpy``) calls ``spladeray.console.configure``, which
    sets process-wide logging (root handlers, ``py.warnings``, the quiet flag, a few env vars):
    undo it after each test, so that no test sees another's console."""
    import logging

    from spladeray import console
    from spladeray.raylogging import RELAY_ENV

    keys = ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "RAY_DATA_LOGGING_CONFIG")
    env = {key: os.environ.get(key) for key in (*keys, RELAY_ENV)}
    state = dict(console._state)
    root, warns = logging.getLogger(), logging.getLogger("py.warnings")
    saved = (list(root.handlers), root.level, list(warns.handlers), warns.propagate)
    yield
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    watcher = console._state.get("watcher")
    if watcher is not None and watcher is not state["watcher"]:
        watcher.stopped.set()
    console._state.clear()
    console._state.update(state)
    root.handlers[:], root.level = saved[0], saved[1]
    warns.handlers[:], warns.propagate = saved[2], saved[3]
    logging.captureWarnings(False)


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster (127.0.0.1) shared by every test that needs Ray.

    Logical CPUs are declared above the machine's 2 cores so that an actor pool of 2 plus the
    tasks feeding it can be scheduled; the object store is kept small for CI machines.
    """
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=6,
            object_store_memory=400 * 1024 * 1024,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
            log_to_driver=False,
        )
    yield ray

    def stop_serve() -> None:
        from ray import serve

        serve.shutdown()

    teardown.bounded("serve.shutdown()", stop_serve)
    teardown.bounded("ray.shutdown()", ray.shutdown)


def pytest_sessionfinish(session, exitstatus) -> None:
    session.config._spladeray_exitstatus = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config) -> None:
    """After the summary: when a teardown hung, end the process now with the session's status
    instead of waiting on the stuck shutdown at interpreter exit."""
    if teardown.hung:
        sys.stdout.flush()
        sys.stderr.write(f"[teardown] exiting without waiting for: {', '.join(teardown.hung)}\n")
        sys.stderr.flush()
        os._exit(getattr(config, "_spladeray_exitstatus", 1))


@pytest.fixture
def staging_root(tmp_path, monkeypatch):
    """Every temporary directory of the test goes here, so that leftovers can be seen."""
    root = tmp_path / "tmp"
    root.mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root
