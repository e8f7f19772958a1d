"""What every loss receives: the vectors of one micro-batch and the teacher scores."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SparseBatch:
    """Vectors of ``B`` queries, their positives and ``n`` hard negatives each (``[*, vocab]``).

    ``teacher[name]`` is ``[B, 1 + n]``: the teacher's score of ``[positive, *negatives]``.
    """

    queries: torch.Tensor  # [B, V]
    positives: torch.Tensor  # [B, V]
    negatives: torch.Tensor  # [B, n, V]
    teacher: dict[str, torch.Tensor] = field(default_factory=dict)
    query_idf: torch.Tensor | None = None  # [V], doc-only models
    # in-batch false negatives (spladeray.train.data.id_key of the ids): document_keys follows
    # ``documents``; query_positive_keys holds every positive of each query, padded with 0
    document_keys: torch.Tensor | None = None  # [B * (1 + n)] int64
    query_positive_keys: torch.Tensor | None = None  # [B, P] int64

    @property
    def documents(self) -> torch.Tensor:
        """Positives then all negatives, ``[B * (1 + n), V]``."""
        return torch.cat([self.positives, self.negatives.flatten(0, 1)], dim=0)

    def candidate_scores(self) -> torch.Tensor:
        """``s[i, 0] = q_i . p_i``, ``s[i, j] = q_i . neg_ij``: ``[B, 1 + n]``."""
        pos = (self.queries * self.positives).sum(-1, keepdim=True)
        neg = torch.einsum("bv,bnv->bn", self.queries, self.negatives)
        return torch.cat([pos, neg], dim=1)
