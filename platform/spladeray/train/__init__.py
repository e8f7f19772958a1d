"""Training: an objective (losses + regulariser schedule), an optimizer builder, a reporter and a
short per-worker loop, run by a Ray Train TorchTrainer.

``run_train(cfg) -> TrainResult`` is the stage function (jobs/train.py); ``build_trainer(cfg)``
the TorchTrainer factory; :mod:`spladeray.train.loop` the loop every worker runs;
:class:`~spladeray.train.objective.SpladeObjective` and
:func:`~spladeray.train.optim.build_optimizer` what it (and bench/train.py) optimises. See
docs/train.md.
"""

from spladeray.train.schedules import lr_multiplier, quadratic_warmup

__all__ = [
    "TrainResult",
    "build_trainer",
    "lr_multiplier",
    "quadratic_warmup",
    "run_train",
]


def __getattr__(name: str):
    # Ray is imported only when the trainer is used, not on ``import spladeray.train``.
    if name in ("build_trainer", "run_train", "TrainResult"):
        from spladeray.train import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
