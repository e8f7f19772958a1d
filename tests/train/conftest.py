"""Fixtures of the training tests: a tiny masked LM and synthetic prepared data (module scope)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import build_tiny_mlm, tiny_tokenizer, write_prepared


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, splade_tiny) -> Path:
    return build_tiny_mlm("bert", tiny_tokenizer(splade_tiny), tmp_path_factory.mktemp("mlm"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("prepared"), n_rows=32, n_neg=2)
