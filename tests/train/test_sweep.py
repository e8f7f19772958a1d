"""The sweep file: parsed and checked before any training, one run name per variant, ranked rows.

Training itself is the train tests' job; ``jobs/sweep.py`` runs the demo's sweep (docs/train.md).
"""

from __future__ import annotations

import pytest

from spladeray.config import ConfigError, load_config
from spladeray.paths import project_root
from spladeray.train.sweep import SweepRow, load_sweep, sweep_table, variant_configs

ROOT = project_root()


def ranked_on_validation(config: str, sweep: str) -> dict:
    """The sweep's variant configs by name, after checking that each one ranks on validation
    queries and trains on the other part of the same split (no query on both sides)."""
    spec = load_sweep(ROOT / sweep)
    variants = variant_configs(ROOT / config, spec, [])
    names = [cfg.train.name for _, _, cfg in variants]
    assert len(set(names)) == len(names) == len(spec["variants"])
    for _, _, cfg in variants:
        ev = cfg.train.eval
        assert ev.split == "train" and ev.holdout.part == "validation"
        assert cfg.prepare.source.holdout.part == "train"
        assert cfg.prepare.source.holdout.fraction == ev.holdout.fraction
    return {name: cfg for name, _, cfg in variants}


def test_demo_sweep_ranks_on_validation_only():
    by_name = ranked_on_validation("configs/demo.yaml", "configs/sweeps/demo.yaml")
    assert [loss.name for loss in by_name["infonce-kl"].train.losses] == ["infonce", "kl"]
    assert by_name["infonce-nomask"].train.mask_in_batch_positives is False
    one = by_name["1-worker"].train
    assert one.num_workers * one.batch_size == 16 == by_name["infonce"].train.num_workers * 8


def test_demo_sweep_winner_is_the_demo_recipe():
    """The sweep's centre (200 queries, 100 steps) is pinned in its own data folder, and the
    variant that won trains exactly what configs/demo.yaml trains, on the demo's prepared data."""
    by_name = ranked_on_validation("configs/demo.yaml", "configs/sweeps/demo.yaml")
    demo = load_config(ROOT / "configs/demo.yaml")
    winner = by_name["all-queries-200-steps"]
    assert winner.prepare == demo.prepare
    selection_only = {"eval", "checkpoint", "name"}
    assert winner.train.model_dump(exclude=selection_only) == demo.train.model_dump(
        exclude=selection_only
    )
    centre = by_name["infonce"]
    assert (centre.prepare.source.max_queries, centre.train.max_steps) == (200, 100)
    assert centre.train.data_dir == centre.prepare.output_dir != demo.prepare.output_dir


def test_scifact_sweep_ranks_on_validation_and_keeps_every_checkpoint():
    by_name = ranked_on_validation("configs/scifact_finetune.yaml", "configs/sweeps/scifact.yaml")
    for cfg in by_name.values():
        assert cfg.train.eval.corpus_limit is None  # the whole corpus
        assert cfg.train.checkpoint.num_to_keep is None  # every step stays, with its score
        assert cfg.train.checkpoint.every_steps == cfg.train.eval.every_steps
    assert [loss.name for loss in by_name["infonce-kl"].train.losses] == ["infonce", "kl"]
    assert by_name["infonce"].train.eval.at_start and not by_name["infonce-kl"].train.eval.at_start


def test_scifact_sweep_searches_one_factor_at_a_time():
    """The temperature and FLOPS-weight variants each move one of the recipe's three settings and
    keep everything else that shapes the model (steps, data, batch, lr) as the recipe has it."""
    by_name = ranked_on_validation("configs/scifact_finetune.yaml", "configs/sweeps/scifact.yaml")
    base = by_name["infonce"].train

    def factors(t) -> tuple:
        return (t.losses[0].temperature, t.regularizer.query_lambda, t.regularizer.document_lambda)

    def shape(t) -> tuple:
        return (t.max_steps, t.batch_size, t.num_negatives, t.lr, t.data_dir, t.precision)

    changed = {
        name: [
            i
            for i, (a, b) in enumerate(zip(factors(cfg.train), factors(base), strict=True))
            if a != b
        ]
        for name, cfg in by_name.items()
    }
    assert changed == {
        "infonce": [],
        "infonce-kl": [],
        "t2.5": [0],
        "t10": [0],
        "qlambda0.03": [1],
        "qlambda0.3": [1],
        "dlambda0.01": [2],
    }
    for cfg in by_name.values():
        assert shape(cfg.train) == shape(base)
        assert cfg.train.max_steps % cfg.train.eval.every_steps == 0  # the last step is scored
    # the recipe carries the winner (query lambda 0.3, docs/train.md), and trains as it did
    recipe = load_config(ROOT / "configs/scifact_finetune.yaml").train
    assert factors(recipe) == factors(by_name["qlambda0.3"].train)
    assert shape(recipe) == shape(base)


def test_a_variant_without_validation_is_refused(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text("variants: [{name: a, set: []}]\n")  # demo.yaml has no train.eval
    with pytest.raises(ConfigError, match="holdout"):
        variant_configs(ROOT / "configs/demo.yaml", load_sweep(sweep), [])


@pytest.mark.parametrize(
    "text, message",
    [
        ("variants: []\n", "non-empty"),
        ("variants: [{name: 'a b'}]\n", "name"),
        ("variants: [{name: a}, {name: a}]\n", "repeat"),
        ("variants: [\n", "sweep file"),
    ],
)
def test_bad_sweep_files(tmp_path, text, message):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_sweep(sweep)


def test_table_puts_the_best_validation_row_first():
    rows = [
        SweepRow("a", [], {"nDCG@10": 0.70, "R@100": 0.9}, 100, 0.5, 10.0),
        SweepRow("b", ["x=1"], {"nDCG@10": 0.75, "R@100": 0.9}, 100, None, 10.0),
    ]
    lines = sweep_table(rows).splitlines()
    assert lines[2].startswith("| b | 0.7500") and lines[3].startswith("| a | 0.7000")
