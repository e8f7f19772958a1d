"""Sweeps on Ray Tune (spladeray.train.sweep_tune), end to end on the local cluster: a tiny model,
2-step runs, validation on SciFact's held-out train queries over its first 300 abstracts.

One Tune sweep (2 trials at a time) holds the cases worth a trial each: variant a, whose first
attempt fails (Tune restarts it); variant broken, which fails every time, before any training
(its row says so). The same a in the driver's loop (``sequential=True``, the path before Tune)
gives the same figures to 4 decimals; a re-run of the Tune sweep resumes the finished variant.
Kept to one full training per path: the test's cost is Ray Train's start-up, per run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from spladeray.config import ConfigError
from spladeray.train.sweep import load_sweep, run_sweep, sweep_table, variant_configs
from spladeray.train.sweep_tune import prepare_once

from helpers import ROOT

PLAIN = ["a"]


def write_files(tmp: Path, model: Path, data: Path, scifact: Path) -> tuple[Path, Path]:
    """The base config and the sweep file (variants a, flaky at first, and broken)."""
    config = {
        "run_name": "s",
        "seed": 0,
        "model": {"path": str(model)},
        "train": {
            "output_dir": str(tmp / "out"),
            "data_dir": str(data),
            "num_workers": 1,
            "batch_size": 4,
            "num_negatives": 2,
            "max_steps": 2,
            "lr": 1e-3,
            "shuffle_buffer": 8,
            "max_query_length": 16,
            "max_document_length": 24,
            "log_every_steps": 1,
            "checkpoint": {"every_steps": 2},
            "losses": [{"name": "infonce"}],
            "eval": {
                "beir_dir": str(scifact),
                "split": "train",
                "corpus_limit": 300,
                "holdout": {"part": "validation", "fraction": 0.15, "seed": 0},
            },
        },
    }
    # a's first attempt dies after step 1 (no checkpoint yet, no Train-level restart); the
    # failure is counted in one marker folder, so it fires once in all (the loop's a trains)
    flaky = [
        "train.debug.fail_at_step=1",
        f"train.debug.marker_dir={tmp / 'markers'}",
        "train.max_failures=0",
    ]
    sweep = {
        "name": "tiny",
        "concurrency": 2,
        "max_failures": 1,
        "variants": [
            {"name": "a", "set": ["train.lr=1.0e-2", *flaky]},
            # no prepared data there: every attempt fails before training starts
            {"name": "broken", "set": [f"train.data_dir={tmp / 'missing'}"]},
        ],
    }
    (tmp / "base.yaml").write_text(yaml.safe_dump(config))
    (tmp / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    return tmp / "base.yaml", tmp / "sweep.yaml"


def checkpoints(tmp: Path) -> dict[str, list[str]]:
    ray_dir = tmp / "out" / "ray"
    return {run.name: sorted(p.name for p in run.glob("checkpoint_*")) for run in ray_dir.iterdir()}


@pytest.mark.timeout(900)
def test_sweep_on_tune_matches_the_loop_retries_reports_failures_and_resumes(
    ray_cluster, tmp_path, tiny_model, prepared, scifact, capsys
):
    config, sweep_file = write_files(tmp_path, tiny_model, prepared, scifact)
    spec = load_sweep(sweep_file)
    rows = run_sweep(config, spec)

    # the console: one line per trial event, none of Tune's tables or trial error reports
    printed = capsys.readouterr().out
    assert "[sweep] variant 1/2 a retrying" in printed
    assert "[sweep] variant 2/2 broken failed" in printed
    assert "Configuration for experiment" not in printed and "Trial status" not in printed
    assert "errored after" not in printed

    assert [r.variant for r in rows] == ["a", "broken"]  # the file's order
    assert (tmp_path / "markers" / "failure_0").exists()  # a's first attempt did fail
    for row in rows[:1]:
        assert row.error is None and row.steps == 2, row
        assert 0.0 <= row.metrics["nDCG@10"] <= 1.0 and "R@100" in row.metrics
    broken = rows[1]
    assert broken.metrics == {} and "missing" in broken.error

    out = tmp_path / "out" / "tiny"
    saved = json.loads((out / "sweep.json").read_text())
    assert [r["variant"] for r in saved] == ["a", "broken"]
    assert saved[1]["error"] == broken.error and saved[0]["error"] is None
    assert "| broken | failed |" in (out / "sweep.md").read_text()
    assert (out / "tune").is_dir()  # Tune's experiment folder, under the sweep's

    # the same variants in the driver's loop, under another sweep name (runs of their own)
    loop_spec = {**spec, "name": "loop", "variants": spec["variants"][:1]}
    loop = run_sweep(config, loop_spec, sequential=True)
    assert [r.variant for r in loop] == PLAIN
    for ours, theirs in zip(rows[:1], loop, strict=True):
        assert ours.metrics.keys() == theirs.metrics.keys()
        for key, value in theirs.metrics.items():
            assert round(ours.metrics[key], 4) == round(value, 4), (ours.variant, key)

    def ranking(table_rows) -> list[str]:
        return [line.split("|")[1].strip() for line in sweep_table(table_rows).splitlines()[2:]]

    assert ranking(rows[:1]) == ranking(loop)

    # a re-run resumes: the finished variants stop at once, with the same rows
    before = checkpoints(tmp_path)
    again = run_sweep(config, spec, max_failures=0)
    assert checkpoints(tmp_path) == before
    for first, second in zip(rows[:1], again[:1], strict=True):
        assert (second.variant, second.steps, second.error) == (first.variant, 2, None)
        assert second.metrics == pytest.approx(first.metrics, abs=1e-4)
    assert again[1].error is not None


@pytest.mark.parametrize(
    "text, message",
    [
        ("concurrency: 0\n", "concurrency must be a whole number >= 1"),
        ("concurrency: two\n", "concurrency"),
        ("concurrency: 1.5\n", "concurrency"),
        ("max_failures: -1\n", "max_failures must be a whole number >= 0"),
        ("max_failures: true\n", "max_failures"),
    ],
)
def test_bad_concurrency_or_max_failures(tmp_path, text, message):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(text + "variants: [{name: a}]\n")
    with pytest.raises(ConfigError, match=message):
        load_sweep(sweep)


def test_sweep_file_defaults_run_one_trial_at_a_time_with_one_retry(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text("variants: [{name: a}]\n")
    spec = load_sweep(sweep)
    assert (spec["concurrency"], spec["max_failures"]) == (1, 1)


def test_variants_preparing_one_folder_differently_are_refused_before_any_work():
    """Trials train with prepare=False on data the driver prepared once per folder: two variants
    that would write one folder with different prepare settings cannot both be right."""
    spec = load_sweep(ROOT / "configs/sweeps/demo.yaml")
    spec["variants"] = [
        {"name": "x", "set": []},
        {"name": "y", "set": ["prepare.source.max_queries=100"]},
    ]
    variants = variant_configs(ROOT / "configs/demo.yaml", spec, [])
    with pytest.raises(ConfigError, match="variants x and y prepare .* different prepare"):
        prepare_once(variants)
