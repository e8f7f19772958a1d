"""Prepared-data helpers for the training tests, and the collate step."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import ROOT, write_prepared


def test_collator_shapes_and_negative_cycling(splade_tiny):
    from spladeray.train.data import Collator

    from helpers import tiny_tokenizer

    tok = tiny_tokenizer(splade_tiny)
    collate = Collator(
        tok, num_negatives=3, max_query_length=8, max_document_length=16, teachers=("ensemble",)
    )
    batch = {
        "query": np.array(["a b", "c"], dtype=object),
        "positive": np.array(["p one", "p two"], dtype=object),
        "negatives": np.array([np.array(["x", "y"]), np.array(["z"])], dtype=object),
        "score_ensemble": np.array([np.array([9.0, 1.0, 2.0]), np.array([8.0, 3.0])], dtype=object),
    }
    out = collate(batch)
    assert out["query"]["input_ids"].shape[0] == 2
    assert out["document"]["input_ids"].shape[0] == 2 + 2 * 3
    assert out["teacher_ensemble"].tolist() == [[9.0, 1.0, 2.0, 1.0], [8.0, 3.0, 3.0, 3.0]]


def test_collator_keys_follow_the_documents(splade_tiny):
    """The in-batch mask's keys: one per document, in the order of ``document``."""
    from spladeray.train.data import Collator, id_key

    from helpers import tiny_tokenizer

    tok = tiny_tokenizer(splade_tiny)
    rows = {
        "query": np.array(["a", "b"], dtype=object),
        "positive": np.array(["x", "y"], dtype=object),
        "negatives": np.array([["n1"], ["n2", "n3"]], dtype=object),
        "positive_id": np.array(["d1", "d2"], dtype=object),
        "negative_ids": np.array([["d9"], ["d7", "d8"]], dtype=object),
        "query_positive_ids": np.array([["d1", "d2"], ["d2"]], dtype=object),
    }
    out = Collator(tok, num_negatives=2, max_query_length=8, max_document_length=8)(rows)
    keys = [id_key(d) for d in ("d1", "d2", "d9", "d9", "d7", "d8")]
    assert out["document_keys"].tolist() == keys
    assert out["query_positive_keys"].tolist() == [[id_key("d1"), id_key("d2")], [id_key("d2"), 0]]


@pytest.mark.parametrize("name", ["demo", "train_cpu_smoke", "train_8gpu", "scifact_finetune"])
def test_training_configs_load(name):
    from spladeray.config import load_config

    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.train is not None and cfg.train.losses
    if name == "train_8gpu":
        assert cfg.train.num_workers == 8 and cfg.train.use_gpu
        assert cfg.train.precision == "bf16" and cfg.train.backend == "nccl"


def test_open_prepared_checks_success_marker_and_columns(tmp_path):
    from spladeray.train.data import open_prepared

    with pytest.raises(FileNotFoundError, match="run jobs/prepare.py"):
        open_prepared(tmp_path, [])
    write_prepared(tmp_path / "p", n_rows=4, teachers=("dense",))
    with pytest.raises(ValueError, match="score_ensemble"):
        open_prepared(tmp_path / "p", ["ensemble"])
    (tmp_path / "p" / "_SUCCESS").unlink()
    with pytest.raises(FileNotFoundError, match="_SUCCESS"):
        open_prepared(tmp_path / "p", [])
