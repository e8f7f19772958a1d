"""Training-step options of issue 30, item 8: evaluation during training in the training dtype,
and DDP's find_unused_parameters only for models that need it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import ROOT


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", "bfloat16"), ("fp32", "float32")])
def test_training_encoder_evaluates_in_the_training_dtype(splade_tiny, precision, dtype):
    from spladeray.config import load_config
    from spladeray.train.step import load_training_encoder

    cfg = load_config(
        ROOT / "configs" / "train_cpu_smoke.yaml",
        overrides=[f"model.path={splade_tiny}", f"train.precision={precision}"],
    )
    encoder = load_training_encoder(cfg)
    assert encoder.precision == dtype and encoder.training
    assert next(encoder.parameters()).dtype == torch.float32  # the weights stay fp32


def test_find_unused_parameters_only_for_remote_code_or_a_trainable_pooler():
    from types import SimpleNamespace

    from spladeray.train.step import find_unused_parameters

    class WithPooler(nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = nn.Module()
            self.bert.pooler = nn.Linear(2, 2)
            self.head = nn.Linear(2, 3)

    own_code = SimpleNamespace(model=SimpleNamespace(trust_remote_code=True))
    plain = SimpleNamespace(model=SimpleNamespace(trust_remote_code=False))
    assert find_unused_parameters(nn.Linear(2, 3), own_code)
    assert not find_unused_parameters(nn.Linear(2, 3), plain)
    model = WithPooler()
    assert find_unused_parameters(model, plain)
    model.bert.pooler.requires_grad_(False)
    assert not find_unused_parameters(model, plain)
