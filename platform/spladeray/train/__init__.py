"""Training: losses, regulariser schedules, the per-worker loop, TorchTrainer, checkpoints.

``run_training(cfg)`` is the driver entry point (jobs/train.py); ``build_trainer(cfg)`` the
TorchTrainer factory; ``train_loop_per_worker`` the loop every worker runs. See docs/train.md.
"""

from spladeray.train.schedules import lr_multiplier, quadratic_warmup

__all__ = ["build_trainer", "lr_multiplier", "quadratic_warmup", "run_training"]


def __getattr__(name: str):
    # Ray is imported only when the trainer is used, not on ``import spladeray.train``.
    if name in ("build_trainer", "run_training", "TrainResult"):
        from spladeray.train import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
