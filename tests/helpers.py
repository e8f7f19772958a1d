"""Tiny models and data built inside tests (no hub, no download)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
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


WORDS = [
    "cell",
    "protein",
    "gene",
    "virus",
    "cancer",
    "brain",
    "heart",
    "blood",
    "immune",
    "tumor",
    "dose",
    "trial",
    "mouse",
    "human",
    "vaccine",
    "insulin",
    "kidney",
    "liver",
    "lung",
    "bone",
    "drug",
    "therapy",
    "receptor",
    "enzyme",
    "signal",
    "neuron",
]


def write_prepared(
    out: Path,
    n_rows: int = 32,
    n_neg: int = 2,
    teachers: tuple[str, ...] = ("dense", "ensemble"),
    shards: int = 2,
    seed: int = 0,
) -> Path:
    """A prepared-data folder in the schema of docs/prepared-data.md (synthetic texts)."""
    from spladeray.data import schema

    rng = random.Random(seed)
    rows = []
    for i in range(n_rows):
        topic = rng.sample(WORDS, 3)
        negs = [" ".join(rng.sample(WORDS, 6)) for _ in range(n_neg)]
        row = {
            "query_id": f"q{i}",
            "query": " ".join(topic),
            "positive_id": f"d{i}",
            "positive": " ".join(topic + rng.sample(WORDS, 4)),
            "negative_ids": [f"n{i}_{j}" for j in range(n_neg)],
            "negatives": negs,
            "query_positive_ids": [f"d{i}"],
        }
        for t in teachers:
            row[schema.score_column(t)] = [10.0] + [float(rng.uniform(0, 8)) for _ in range(n_neg)]
        rows.append(row)
    (out / schema.SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    table_schema = schema.arrow_schema(teachers)
    per = (n_rows + shards - 1) // shards
    for s in range(shards):
        part = rows[s * per : (s + 1) * per]
        table = pa.table({k: [r[k] for r in part] for k in table_schema.names}, schema=table_schema)
        pq.write_table(table, out / schema.SHARDS_DIR / f"part-{s:05d}.parquet")
    manifest = {"schema_version": schema.SCHEMA_VERSION, "rows": n_rows, "teachers": list(teachers)}
    (out / schema.MANIFEST_FILE).write_text(json.dumps(manifest))
    (out / schema.REJECTS_FILE).write_text("")
    (out / schema.SUCCESS_FILE).write_text("")
    return out
