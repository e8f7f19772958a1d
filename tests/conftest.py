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
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()


@pytest.fixture
def staging_root(tmp_path, monkeypatch):
    """Every temporary directory of the test goes here, so that leftovers can be seen."""
    root = tmp_path / "tmp"
    root.mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root
