"""Training: losses, regulariser schedules, the per-worker loop, TorchTrainer, checkpoints."""
