"""Synthetic prepared data in the schema of docs/prepared-data.md, for benchmarks and tests.

Texts are drawn from a small biomedical vocabulary: a query is ``query_words`` words, its
positive repeats them plus ``positive_extra`` more, and each hard negative is ``negative_words``
random words. Every teacher column scores the positive 10 and the negatives below 8, so
distillation losses have a clear signal. Nothing here is read by the training stage itself.
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from spladeray import storage
from spladeray.data import schema

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
    "membrane",
    "plasma",
    "mutation",
    "pathway",
    "infection",
    "antibody",
    "clinical",
    "cohort",
    "risk",
    "outcome",
    "mortality",
    "expression",
]


def write_prepared(
    out: str | Path,
    n_rows: int = 32,
    n_neg: int = 2,
    teachers: tuple[str, ...] = ("dense", "ensemble"),
    shards: int = 2,
    seed: int = 0,
    *,
    query_words: int = 3,
    positive_extra: int = 4,
    negative_words: int = 6,
) -> Path:
    """Write ``n_rows`` rows with ``n_neg`` negatives each in ``shards`` parquet files under
    ``out`` (a local folder), plus the manifest, an empty rejects file and ``_SUCCESS``."""
    rng = random.Random(seed)
    out = Path(out)

    def words(n: int) -> list[str]:
        return [rng.choice(WORDS) for _ in range(n)]

    rows = []
    for i in range(n_rows):
        topic = words(query_words)
        row = {
            "query_id": f"q{i}",
            "query": " ".join(topic),
            "positive_id": f"d{i}",
            "positive": " ".join(topic + words(positive_extra)),
            "negative_ids": [f"n{i}_{j}" for j in range(n_neg)],
            "negatives": [" ".join(words(negative_words)) for _ in range(n_neg)],
            "query_positive_ids": [f"d{i}"],
        }
        for t in teachers:
            row[schema.score_column(t)] = [10.0] + [rng.uniform(0, 8) for _ in range(n_neg)]
        rows.append(row)
    table_schema = schema.arrow_schema(teachers)
    (out / schema.SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    per = (n_rows + shards - 1) // shards
    for s in range(shards):
        part = rows[s * per : (s + 1) * per]
        table = pa.table({k: [r[k] for r in part] for k in table_schema.names}, schema=table_schema)
        pq.write_table(table, out / schema.SHARDS_DIR / f"part-{s:05d}.parquet")
    manifest = {"schema_version": schema.SCHEMA_VERSION, "rows": n_rows, "teachers": list(teachers)}
    storage.write_json(str(out / schema.MANIFEST_FILE), manifest)
    (out / schema.REJECTS_FILE).write_text("")
    (out / schema.SUCCESS_FILE).write_text("")
    return out


def write_bench_data(out: str | Path, rows: int, n_neg: int) -> Path:
    """What the training benchmarks train on: one shard, the ensemble teacher, 8-word queries
    and 60-word documents (about the token counts of real queries and passages)."""
    return write_prepared(
        out,
        rows,
        n_neg,
        teachers=("ensemble",),
        shards=1,
        query_words=8,
        positive_extra=52,
        negative_words=60,
    )
