"""The demo entry point runs end to end on a corpus subset (the full demo is `make demo`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import ROOT


def run_demo(
    *sets: str, args: tuple[str, ...] = (), config: Path | None = None, timeout=300, env=None
) -> subprocess.CompletedProcess:
    """``jobs/demo.py --config <config> <args> --set <each of sets>``, output captured.

    The job starts its own local Ray cluster; tests keep its dashboard off.
    """
    sets = ("ray.include_dashboard=false", *sets)
    overrides = [part for item in sets for part in ("--set", item)]
    command = [sys.executable, str(ROOT / "jobs" / "demo.py")]
    command += ["--config", str(config or ROOT / "configs" / "demo.yaml"), *args, *overrides]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def test_search_demo_prints_ranked_results(tmp_path):
    out = run_demo(
        "data.corpus_limit=60",
        f"index.path={tmp_path / 'index'}",
        "demo.num_queries=2",
        args=("--search-only",),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "indexed 60 documents" in out.stdout
    assert out.stdout.count("query tokens:") == 2
    assert "matched:" in out.stdout


def test_bad_config_exits_with_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  path: x\n  pooling: mean\n")
    out = run_demo(config=bad, timeout=120)
    assert out.returncode != 0
    assert "model.pooling" in out.stderr and str(bad) in out.stderr


def test_full_demo_path_small(tmp_path):
    """prepare -> train -> export -> serve -> index -> search -> evaluate on a small slice, on
    the quiet console: each stage's result line and no Ray machinery (issue 33)."""
    import os

    env = dict(os.environ, SPLADERAY_RUNS=str(tmp_path / "runs"))
    out = run_demo(
        "data.corpus_limit=200",
        "prepare.source.max_queries=8",
        "prepare.negatives.num_negatives=3",
        "train.max_steps=3",
        "train.batch_size=2",
        "train.checkpoint.every_steps=2",
        "demo.num_queries=2",
        timeout=1200,
        env=env,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for stage in ("1/5 prepare", "2/5 train", "3/5 export", "4/5 serve", "5/5 evaluate"):
        assert stage in out.stdout
    assert "POST /search" in out.stdout and "matched:" in out.stdout
    assert "| splade-tiny (fine-tuned) | sparse |" in out.stdout
    assert "| bm25 + splade-tiny (fine-tuned) rrf | hybrid |" in out.stdout
    assert "fine-tuning: nDCG@10 " in out.stdout
    assert "fusing with BM25 (rrf): R@100 " in out.stdout
    runs = tmp_path / "runs" / "demo"
    assert (runs / "prepared" / "_SUCCESS").is_file()
    assert (runs / "train" / "demo" / "model" / "spladeray.json").is_file()
    assert list((runs / "export").glob("*.zip"))
    png = (runs / "eval" / "quality_vs_dims.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert (runs / "train" / "demo" / "curves.png").read_bytes().startswith(b"\x89PNG")
    # The quiet console (spladeray.console): none of Ray's machinery on either stream...
    both = out.stdout + out.stderr
    for noise in (
        "TrainingReport(",  # Ray Train's report dicts
        "Running Dataset",  # Ray Data's progress repaints (non-TTY: logged blocks)
        "Total Progress",
        "Execution plan of Dataset",
        "(TrainController pid=",  # any forwarded worker output
        "(ServeController pid=",
        "Loading weights",  # transformers' bars
        "HTTP Request:",  # httpx's INFO lines
        "Deployed app",
    ):
        assert noise not in both, noise
    # ... and each stage's result line, training's progress with its ETA
    for result in (
        "prepare: 8 rows",
        "[train] step 3/3 (100%) | ",
        "trained model: ",
        "export: ",
        "200 documents indexed",
        "fine-tuning: nDCG@10 ",
        "stage seconds: ",
    ):
        assert result in out.stdout, result
    assert " left | loss " in out.stdout
