"""Per-stage counters for a prepare run: a small Ray actor the stage actors report to.

Stages of a Ray Data pipeline overlap in time, so each stage is measured by its busy time: the
seconds its actors spent inside the batch function, summed over actors (``actor_s``), plus the
number of distinct actors that did work (``actors_used``). How many actors that is depends on
scheduling (a pool of 2 may hand every batch to one of them); the pool size the job asked for is
added by the pipeline as ``pool``.
"""

from __future__ import annotations

from collections import defaultdict

import ray


@ray.remote(num_cpus=0)
class StageStats:
    def __init__(self) -> None:
        self.stages: dict[str, dict] = defaultdict(
            lambda: {"rows": 0, "batches": 0, "actor_s": 0.0, "actors": set()}
        )

    def record(self, stage: str, rows: int, seconds: float, actor: str | None = None, **extra):
        entry = self.stages[stage]
        entry["rows"] += rows
        entry["batches"] += 1
        entry["actor_s"] += seconds
        entry["actors"].add(actor)
        for key, value in extra.items():
            entry[key] = entry.get(key, 0) + value

    def summary(self) -> dict[str, dict]:
        out = {}
        for stage, entry in self.stages.items():
            item = {k: v for k, v in entry.items() if k != "actors"}
            item.update(actors_used=len(entry["actors"]), actor_s=round(entry["actor_s"], 3))
            item["rows_per_actor_s"] = round(entry["rows"] / max(entry["actor_s"], 1e-9), 2)
            out[stage] = item
        return out


def report(stats, stage: str, rows: int, seconds: float, **extra) -> None:
    """Fire-and-forget report from inside a Ray Data actor (its actor id identifies it)."""
    actor = ray.get_runtime_context().get_actor_id()
    stats.record.remote(stage, rows, seconds, actor=actor, **extra)
