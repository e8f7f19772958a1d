"""AdamW with decay / no-decay parameter groups, and its learning-rate schedule.

Groups (as in BERT / nanoGPT): matrices of the backbone and the legacy linear head decay with
``train.weight_decay``; biases, norms and other 1-d parameters do not; a trainable IDF table
(``train.train_idf``, doc-only models) gets its own group with ``train.idf_lr`` and no decay.
"""

from __future__ import annotations

import torch

from spladeray.train.schedules import lr_multiplier


def parameter_groups(encoder, train_cfg) -> list[dict]:
    decay, no_decay = [], []
    for name, p in encoder.mlm.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    if encoder.head is not None:
        decay.extend(p for p in encoder.head.parameters() if p.requires_grad)
    groups = [
        {"params": decay, "weight_decay": train_cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if train_cfg.train_idf:
        groups.append(
            {
                "params": [encoder.idf_weight],
                "weight_decay": 0.0,
                "lr": train_cfg.idf_lr or train_cfg.lr,
            }
        )
    return groups


def build_optimizer(encoder, train_cfg) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups` of a :class:`SpladeEncoder`."""
    return torch.optim.AdamW(parameter_groups(encoder, train_cfg), lr=train_cfg.lr)


def build_scheduler(optimizer, train_cfg) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_steps``, then linear decay to 0 at ``max_steps`` (or constant)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lr_multiplier(train_cfg.warmup_steps, train_cfg.max_steps, train_cfg.lr_decay),
    )
