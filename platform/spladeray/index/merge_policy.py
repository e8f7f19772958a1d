"""When the embedded index merges segments: size tiers, as Lucene's tiered/log merge policies.

A segment of ``n`` documents sits in tier ``round(log_factor(max(n, floor_docs) / floor_docs))``.
When a tier holds ``factor`` segments, its ``factor`` smallest are merged into one segment of the
next tier. Each document is therefore rewritten about ``log_factor(N / floor_docs)`` times: a
bulk load costs O(N log N), and an index holds at most ``factor - 1`` segments per tier, a
number of segments logarithmic in N. Segments of ``max_docs / 2`` documents or more are never
merged again (Lucene's ``maxMergedSegmentMB``): that bounds the memory of one merge and keeps a
write from ever rewriting the whole index; beyond it, the segment count grows by one per
``max_docs / 2`` documents.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TieredMergePolicy:
    factor: int = 8
    floor_docs: int = 1000
    max_docs: int = 1 << 19

    def __post_init__(self) -> None:
        if self.factor < 2 or self.floor_docs < 1 or self.max_docs < 2:
            raise ValueError("merge policy: factor >= 2, floor_docs >= 1, max_docs >= 2")

    def tier(self, docs: int) -> int:
        return round(math.log(max(docs, self.floor_docs) / self.floor_docs, self.factor))

    def pick(self, sizes: Sequence[int]) -> list[int] | None:
        """Positions of the segments to merge next (by document count), or None."""
        tiers: dict[int, list[int]] = {}
        for i, n in enumerate(sizes):
            if n < self.max_docs / 2:
                tiers.setdefault(self.tier(n), []).append(i)
        for tier in sorted(tiers):
            members = sorted(tiers[tier], key=lambda i: (sizes[i], i))
            if len(members) >= self.factor:
                chosen = members[: self.factor]
                while len(chosen) > 2 and sum(sizes[i] for i in chosen) > self.max_docs:
                    chosen.pop()
                if sum(sizes[i] for i in chosen) <= self.max_docs:
                    return sorted(chosen)
        return None
