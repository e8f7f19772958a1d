"""SPLADE encoders: computation, loading, saving and export.

``from spladeray.model import SpladeEncoder`` is the public entry point.
"""

from spladeray.model.encoder import RandomHeadError, SpladeEncoder
from spladeray.model.idf import compute_idf, load_idf, save_idf
from spladeray.model.loading import load_encoder, load_encoder_from_config
from spladeray.model.sparse import csr_to_dicts, sparse_dot, top_tokens

__all__ = [
    "RandomHeadError",
    "SpladeEncoder",
    "compute_idf",
    "load_encoder",
    "load_encoder_from_config",
    "csr_to_dicts",
    "load_idf",
    "save_idf",
    "sparse_dot",
    "top_tokens",
]
