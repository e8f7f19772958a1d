"""Tiny models and data built inside tests (no hub, no download)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
"""The checkout root (tests live one or two levels below it)."""


def tiny_tokenizer(splade_tiny: Path):
    """The real BERT WordPiece tokenizer shipped with splade-tiny (30,522 entries)."""
    return AutoTokenizer.from_pretrained(splade_tiny)


# The shape of every tiny BERT-family model the tests build: fast, and still a real transformer.
TINY_BERT = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def tiny_bert_config(vocab_size: int, **extra):
    """A ``BertConfig`` of the :data:`TINY_BERT` shape (``extra`` e.g. ``num_labels=1``)."""
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, **TINY_BERT, **extra)


def build_tiny_base(tokenizer, out: Path, seed: int = 0):
    """A tiny BERT encoder saved *without* a masked-LM head (loading it gives a random head);
    returns the model in eval mode."""
    from transformers import BertModel

    torch.manual_seed(seed)
    base = BertModel(tiny_bert_config(len(tokenizer)))
    base.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return base.eval()


def build_tiny_mlm(arch: str, tokenizer, out: Path, seed: int = 0) -> Path:
    """A randomly initialised but complete masked-LM of the given family, saved to ``out``."""
    from transformers import (
        BertForMaskedLM,
        DistilBertConfig,
        DistilBertForMaskedLM,
        RobertaConfig,
        RobertaForMaskedLM,
    )

    torch.manual_seed(seed)
    v = len(tokenizer)
    if arch == "bert":
        model = BertForMaskedLM(tiny_bert_config(v))
    elif arch == "distilbert":
        model = DistilBertForMaskedLM(
            DistilBertConfig(vocab_size=v, dim=32, n_layers=1, n_heads=2, hidden_dim=64)
        )
    elif arch == "roberta":
        model = RobertaForMaskedLM(
            RobertaConfig(
                vocab_size=v,
                **TINY_BERT,
                pad_token_id=tokenizer.pad_token_id,
                max_position_embeddings=600,
            )
        )
    else:
        raise ValueError(arch)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def write_beir(root: Path, corpus: list[dict], queries: list[dict], qrels: dict) -> Path:
    """A small BEIR directory: ``qrels`` is ``{split: [(qid, did, rel), ...]}``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels").mkdir(exist_ok=True)
    for split, rows in qrels.items():
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{r}" for q, d, r in rows]
        (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


def write_prepared(out: Path, n_rows: int = 32, n_neg: int = 2, **kwargs) -> Path:
    """A prepared-data folder in the schema of docs/prepared-data.md (synthetic texts)."""
    from spladeray.data.synthetic import write_prepared as write

    return write(out, n_rows, n_neg, **kwargs)


def tiny_train_section(output_dir, data_dir, **overrides) -> dict:
    """The ``train:`` section of a job-sized run: 2 workers x 2 steps of a tiny model."""
    return {
        "output_dir": str(output_dir),
        "data_dir": str(data_dir),
        "num_workers": 2,
        "cpus_per_worker": 1,
        "batch_size": 4,
        "num_negatives": 1,
        "max_steps": 2,
        "max_query_length": 16,
        "max_document_length": 24,
        "log_every_steps": 1,
        "tensorboard": False,
        "checkpoint": {"every_steps": 2},
        **overrides,
    }


def no_special(enc, weights):
    """A naive SPLADE reference with the special tokens' dimensions zeroed, as the encoder does
    (differentiable: a zeroed column has zero gradient, as in the encoder)."""
    weights = weights.clone()
    weights[:, enc.tokenizer.all_special_ids] = 0
    return weights
