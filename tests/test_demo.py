"""The demo entry point runs end to end on a corpus subset (the full demo is `make demo`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_search_demo_prints_ranked_results(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs" / "demo.py"),
            "--config",
            str(ROOT / "configs" / "demo.yaml"),
            "--set",
            "data.corpus_limit=60",
            "--set",
            f"index.path={tmp_path / 'index'}",
            "--set",
            "demo.num_queries=2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "indexed 60 documents" in out.stdout
    assert out.stdout.count("query tokens:") == 2
    assert "matched:" in out.stdout


def test_bad_config_exits_with_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  path: x\n  pooling: mean\n")
    out = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "demo.py"), "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "model.pooling" in out.stderr and str(bad) in out.stderr
