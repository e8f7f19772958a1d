"""Prepared-data helpers for the training tests, and the collate step."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import ROOT

WORDS = [
    "cell",
    "protein",
    "gene",
    "virus",
    "cancer",
    "brain",
    "heart",
    "blood",
    "immune",
    "tumor",
    "dose",
    "trial",
    "mouse",
    "human",
    "vaccine",
    "insulin",
    "kidney",
    "liver",
    "lung",
    "bone",
    "drug",
    "therapy",
    "receptor",
    "enzyme",
    "signal",
    "neuron",
]


def write_prepared(
    out: Path,
    n_rows: int = 32,
    n_neg: int = 2,
    teachers: tuple[str, ...] = ("dense", "ensemble"),
    shards: int = 2,
    seed: int = 0,
) -> Path:
    """A prepared-data folder in the schema of docs/prepared-data.md (synthetic texts)."""
    from spladeray.data import schema

    rng = random.Random(seed)
    rows = []
    for i in range(n_rows):
        topic = rng.sample(WORDS, 3)
        negs = [" ".join(rng.sample(WORDS, 6)) for _ in range(n_neg)]
        row = {
            "query_id": f"q{i}",
            "query": " ".join(topic),
            "positive_id": f"d{i}",
            "positive": " ".join(topic + rng.sample(WORDS, 4)),
            "negative_ids": [f"n{i}_{j}" for j in range(n_neg)],
            "negatives": negs,
            "query_positive_ids": [f"d{i}"],
        }
        for t in teachers:
            row[schema.score_column(t)] = [10.0] + [float(rng.uniform(0, 8)) for _ in range(n_neg)]
        rows.append(row)
    (out / schema.SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    table_schema = schema.arrow_schema(teachers)
    per = (n_rows + shards - 1) // shards
    for s in range(shards):
        part = rows[s * per : (s + 1) * per]
        table = pa.table({k: [r[k] for r in part] for k in table_schema.names}, schema=table_schema)
        pq.write_table(table, out / schema.SHARDS_DIR / f"part-{s:05d}.parquet")
    manifest = {"schema_version": schema.SCHEMA_VERSION, "rows": n_rows, "teachers": list(teachers)}
    (out / schema.MANIFEST_FILE).write_text(json.dumps(manifest))
    (out / schema.REJECTS_FILE).write_text("")
    (out / schema.SUCCESS_FILE).write_text("")
    return out


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
