"""spladeray: train, serve and search learned sparse retrieval encoders on Ray."""

__version__ = "0.1.0"
