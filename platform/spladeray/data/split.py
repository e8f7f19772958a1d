"""A deterministic train / validation split of a query set, by query id.

Model selection (hyper-parameters, checkpoints) must never look at the split that is reported as
the test set (SciFact ``dev``). So the training queries (``qrels/train.tsv``) are split in two
inside the project: prepare keeps the ``train`` part only, and evaluation during training scores
the ``validation`` part. A query's side depends on its id and the seed alone::

    u(q)        = int(sha256(f"{seed}:{q}")[:16], 16) / 2**64      (uniform in [0, 1))
    validation  = { q : u(q) < fraction }
    train       = { q : u(q) >= fraction }

so the split is the same in every process and run, does not depend on the order or the number
of queries read (``max_queries`` takes the first N of the *train* part), and a query never sits
on both sides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

PARTS = ("train", "validation")


def position(query_id: str, seed: int = 0) -> float:
    """``u(q)`` of the module docstring: where ``query_id`` falls in [0, 1)."""
    digest = hashlib.sha256(f"{seed}:{query_id}".encode()).hexdigest()
    return int(digest[:16], 16) / 2**64


def in_part(query_id: str, part: str, fraction: float, seed: int = 0) -> bool:
    """Whether ``query_id`` belongs to ``part`` (``train`` or ``validation``)."""
    if part not in PARTS:
        raise ValueError(f"holdout part must be one of {PARTS}, got {part!r}")
    held_out = position(query_id, seed) < fraction
    return held_out if part == "validation" else not held_out


def select(query_ids: Iterable[str], holdout) -> list[str]:
    """The ids of ``holdout.part`` (a :class:`spladeray.config.HoldoutConfig`), in order."""
    return [q for q in query_ids if in_part(q, holdout.part, holdout.fraction, holdout.seed)]
