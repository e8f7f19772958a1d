"""Write a :class:`SpladeEncoder` so that every consumer can load it.

Layout of a saved directory (masked-LM models, i.e. everything spladeray trains):

- the Hugging Face masked-LM and tokenizer at the root: ``transformers.AutoModelForMaskedLM``
  and OpenSearch-style tooling load it directly;
- sentence-transformers files (``modules.json`` ...), written by sentence-transformers itself so
  the installed version can read them: ``Transformer(fill-mask) + SpladePooling`` or, for doc-only
  models, a query/document ``Router`` whose query side is a ``SparseStaticEmbedding`` holding the
  IDF weights (its document Transformer's weight file is a relative link to the root one);
- ``idf.json`` for doc-only models (OpenSearch ``SPARSE_TOKENIZE`` format);
- ``spladeray.json``: our settings (max lengths, pruning, pooling) and provenance metadata.

Legacy models (base encoder + ``neural_sparse_head.pt``) are written back in their own layout;
sentence-transformers has no module for a bare linear head, so those directories are loadable by
spladeray only. Fine-tuning always produces a masked-LM layout.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from spladeray.model.encoder import SpladeEncoder
from spladeray.model.idf import save_idf
from spladeray.model.loading import IDF_FILE, LEGACY_HEAD_FILE, METADATA_FILE

FORMAT_VERSION = 1


def save_encoder(encoder: SpladeEncoder, directory: str | os.PathLike[str]) -> Path:
    """Save ``encoder`` to ``directory`` (created; existing model files are overwritten)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    encoder.mlm.save_pretrained(out, safe_serialization=True)
    encoder.tokenizer.save_pretrained(out)
    idf = encoder.idf_table()
    if idf is not None:
        save_idf(idf, out / IDF_FILE)
    if encoder.head is not None:
        torch.save(encoder.head.linear.state_dict(), out / LEGACY_HEAD_FILE)
    else:
        _write_sentence_transformers(encoder, out)
    meta = {
        k: v for k, v in encoder.metadata.items() if k != "autocast_dtype"
    }  # pre-0.2 runtime key
    (out / METADATA_FILE).write_text(
        json.dumps(
            {"format_version": FORMAT_VERSION, "config": encoder.config_dict(), "metadata": meta},
            indent=2,
        )
    )
    return out


def _write_sentence_transformers(encoder: SpladeEncoder, out: Path) -> None:
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding, SpladePooling

    try:  # sentence-transformers >= 6
        from sentence_transformers.base.modules.transformer import Transformer

        transformer = Transformer(
            str(out),
            transformer_task="fill-mask",
            max_seq_length=encoder.max_document_length,
            query_length=encoder.max_query_length,
            document_length=encoder.max_document_length,
        )
    except ImportError:  # sentence-transformers 5.x
        from sentence_transformers.sparse_encoder.models import MLMTransformer

        transformer = MLMTransformer(str(out), max_seq_length=encoder.max_document_length)
    pooling = SpladePooling(
        pooling_strategy=encoder.pooling, activation_function=encoder.activation
    )
    if encoder.doc_only:
        from sentence_transformers.base.modules.router import Router

        static = SparseStaticEmbedding(
            encoder.tokenizer, weight=encoder.idf_weight.detach().float().cpu(), frozen=True
        )
        static.max_seq_length = encoder.max_query_length
        router = Router.for_query_document(
            query_modules=[static], document_modules=[transformer, pooling]
        )
        st_model = SparseEncoder(modules=[router], similarity_fn_name="dot", device="cpu")
    else:
        st_model = SparseEncoder(
            modules=[transformer, pooling], similarity_fn_name="dot", device="cpu"
        )
    st_model.save(str(out))
    if encoder.doc_only:
        _link_duplicate_weights(out)


def _link_duplicate_weights(out: Path) -> None:
    """Replace the Router's copy of the masked-LM weights by a relative link to the root file."""
    root_file = out / "model.safetensors"
    for sub in out.iterdir():
        copy = sub / "model.safetensors"
        if sub.is_dir() and sub.name.startswith("document_") and copy.is_file():
            if copy.stat().st_size != root_file.stat().st_size:
                continue
            copy.unlink()
            try:
                copy.symlink_to(Path("..") / "model.safetensors")
            except OSError:  # filesystems without links keep a copy
                shutil.copyfile(root_file, copy)
