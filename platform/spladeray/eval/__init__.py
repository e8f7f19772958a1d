"""Evaluation: metrics (ir-measures), sparsity, reports, and the one BEIR pipeline (runner).

Retrievers and fusion live in :mod:`spladeray.retrieval`.

``run_evaluation(cfg)`` runs the ``evaluate:`` section of a config (what ``jobs/evaluate.py``
and the demo call); ``evaluate_systems`` is the same without config files. Names are imported
lazily, so ``spladeray.eval.report`` (used by bench/run_all.py) does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DEFAULT_MEASURES": "spladeray.eval.metrics",
    "evaluate_run": "spladeray.eval.metrics",
    "per_query": "spladeray.eval.metrics",
    "expected_flops": "spladeray.eval.sparsity",
    "sparsity_stats": "spladeray.eval.sparsity",
    "Dataset": "spladeray.eval.runner",
    "EvalResults": "spladeray.eval.runner",
    "evaluate_retriever": "spladeray.eval.runner",
    "evaluate_systems": "spladeray.eval.runner",
    "run_evaluation": "spladeray.eval.runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'spladeray.eval' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
