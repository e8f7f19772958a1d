"""The train / validation query split (spladeray.data.split) and where it is applied."""

from __future__ import annotations

from spladeray.config import EvalDatasetConfig, HoldoutConfig
from spladeray.data.split import in_part, position, select

from helpers import write_beir

IDS = [str(i) for i in range(2000)]


def test_split_is_deterministic_disjoint_and_near_its_fraction():
    val = select(IDS, HoldoutConfig(part="validation", fraction=0.15))
    train = select(IDS, HoldoutConfig(part="train", fraction=0.15))
    assert set(val).isdisjoint(train) and len(val) + len(train) == len(IDS)
    assert 0.12 < len(val) / len(IDS) < 0.18
    # the same on any order and subset of ids: a query's side depends on its id and seed only
    assert select(IDS[::-1], HoldoutConfig(part="validation", fraction=0.15)) == val[::-1]
    assert all(in_part(q, "validation", 0.15) for q in val[:50])
    other_seed = select(IDS, HoldoutConfig(part="validation", fraction=0.15, seed=1))
    assert other_seed != val
    assert 0.0 <= position("x") < 1.0 and position("x") == position("x")


def test_evaluation_scores_only_the_validation_part(tmp_path):
    from spladeray.eval.runner import Dataset

    corpus = [{"_id": f"d{i}", "text": f"doc {i}"} for i in range(40)]
    queries = [{"_id": f"q{i}", "text": f"query {i}"} for i in range(40)]
    beir = write_beir(
        tmp_path, corpus, queries, {"train": [(f"q{i}", f"d{i}", 1) for i in range(40)]}
    )
    holdout = HoldoutConfig(part="validation", fraction=0.3)
    data = Dataset.load(EvalDatasetConfig(beir_dir=beir, split="train", holdout=holdout))
    want = [q["_id"] for q in queries if in_part(q["_id"], "validation", 0.3)]
    assert list(data.queries) == want and 0 < len(want) < 40


def test_prepare_keeps_the_train_part_and_counts_the_rest():
    from spladeray.data.readers import _QueryLimit

    limit = _QueryLimit(None, HoldoutConfig(part="train", fraction=0.3))
    kept = [q for q in IDS[:200] if limit.allows(q)]
    assert kept == select(IDS[:200], HoldoutConfig(part="train", fraction=0.3))
    assert limit.held_out == 200 - len(kept)
