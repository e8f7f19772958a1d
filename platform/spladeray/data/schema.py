"""The prepared-data format: one place for what prepare writes and training reads.

Documented for users in ``docs/prepared-data.md``; a test checks that page against this module.
The producer (:mod:`spladeray.data.pipeline`) and the consumer (:mod:`spladeray.train.data`) both
import these names, so a rename cannot reach one side only.

A prepared folder holds::

    <output_dir>/shards/*.parquet   one row per (query, positive) pair, columns below
    <output_dir>/manifest.json      counts, config hash, timings, teachers, schema_version
    <output_dir>/rejects.jsonl      one line per rejected input row, with its reason
    <output_dir>/_SUCCESS           written last: the folder is complete
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from spladeray import storage

SCHEMA_VERSION = 1
"""Bumped when a column changes meaning or type; part of prepare's config hash."""

SHARDS_DIR = "shards"
MANIFEST_FILE = "manifest.json"
REJECTS_FILE = "rejects.jsonl"
SUCCESS_FILE = "_SUCCESS"

STRING = pa.string()
STRING_LIST = pa.list_(pa.string())
FLOAT_LIST = pa.list_(pa.float32())

PAIR_COLUMNS: dict[str, pa.DataType] = {
    "query_id": STRING,
    "query": STRING,
    "positive_id": STRING,
    "positive": STRING,
    "negative_ids": STRING_LIST,
    "negatives": STRING_LIST,
    "query_positive_ids": STRING_LIST,
}
"""Every row has these, in this order; score columns follow."""

TEXT_COLUMNS = ("query", "positive", "negatives")
"""The text columns training reads."""

SCORE_PREFIX = "score_"
SCORE_TYPE = FLOAT_LIST
"""A score column holds one float per candidate ``[positive, *negatives]``."""

ENSEMBLE = "ensemble"
"""The reserved name of the ensemble score; no teacher may be called this."""


def score_column(teacher: str) -> str:
    """``score_<teacher>``: the column of a teacher's scores (``score_ensemble`` for the mix)."""
    return SCORE_PREFIX + teacher


def arrow_schema(teachers: list[str] | tuple[str, ...] = (), *, ensemble: bool = False):
    """The shards' Arrow schema for these teachers (in order), plus ``score_ensemble``."""
    names = [*teachers, ENSEMBLE] if ensemble else list(teachers)
    fields = [pa.field(n, t) for n, t in PAIR_COLUMNS.items()]
    return pa.schema(fields + [pa.field(score_column(n), SCORE_TYPE) for n in names])


# ---------------------------------------------------------------------------- manifest
def load_manifest(output_dir: str | Path) -> dict | None:
    uri = storage.join(output_dir, MANIFEST_FILE)
    return storage.read_json(uri) if storage.exists(uri) else None


def is_complete(output_dir: str | Path, digest: str) -> bool:
    manifest = load_manifest(output_dir)
    done = storage.exists(storage.join(output_dir, SUCCESS_FILE))
    return done and manifest is not None and manifest.get("config_hash") == digest


def summary_line(m: dict) -> str:
    """``prepare: rows, rejects, seconds, rows/s per stage`` on one line."""
    t = m["timings_s"]
    parts = [
        f"prepare: {m['rows']} rows, {m['rejected']} rejected, {t['total']:.1f}s",
        f"read {t['read']:.1f}s",
        f"index {t['index']:.1f}s",
        f"pipeline {t['pipeline']:.1f}s ({m['rows'] / max(t['pipeline'], 1e-9):.1f} rows/s)",
    ]
    for stage, s in m.get("stages", {}).items():
        if "rows_per_actor_s" in s:
            used = f"{s['actors_used']} of {s['pool']}" if "pool" in s else s["actors_used"]
            parts.append(f"{stage} {s['rows_per_actor_s']:.1f} rows/actor-s x{used}")
    return " | ".join(parts) + f" -> {m['output_dir']}"
