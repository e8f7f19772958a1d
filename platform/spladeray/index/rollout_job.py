"""``jobs/index.py --rollout`` / ``--rollback``: zero-downtime model switches on OpenSearch.

A rollout builds ``<alias>-<model hash>`` with the normal Ray Data indexing job, checks that it
holds every accepted source document, and only then swaps the alias in one atomic ``_aliases``
call; the previous index is kept for :func:`run_rollback`. See :mod:`spladeray.index.rollout`.
"""

from __future__ import annotations

from typing import Any

from spladeray.index import rollout as ro


def _client(cfg):
    from transformers import AutoTokenizer

    from spladeray.serving.api import open_backend

    if cfg.index.backend != "opensearch":
        raise ValueError(
            f"{cfg.source}: --rollout/--rollback need index.backend: opensearch (aliases are an "
            "OpenSearch feature; the embedded index is rebuilt in place)"
        )
    tokenizer = None
    if cfg.index.opensearch.field_type == "sparse_vector":
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    return open_backend(cfg.index, tokenizer)


def run_rollout(cfg, *, limit: int | None = None, rebuild: bool = False) -> dict[str, Any]:
    """Index the corpus into a new versioned index and move the alias to it."""
    from spladeray.model.loading import load_encoder_from_config
    from spladeray.serving.indexing import run_index_job

    backend = _client(cfg)
    settings = cfg.index.rollout
    alias = settings.alias or cfg.index.name
    encoder = load_encoder_from_config(cfg.model.model_copy(update={"device": "cpu"}))
    model_hash = ro.model_hash_from_encoder(encoder)
    del encoder
    summaries: list[dict[str, Any]] = []

    def build(name: str) -> None:
        job_cfg = cfg.model_copy(update={"index": cfg.index.model_copy(update={"name": name})})
        summary = run_index_job(job_cfg, limit=limit)
        summaries.append(summary)
        if summary["failed"]:
            raise ro.RolloutError(
                f"{summary['failed']} documents failed to index into {name}; the alias was not "
                f"moved (first failures: {summary['failures'][:3]})"
            )

    def expected() -> int:
        # every source row the job accepted: indexed + skipped (already there); rejects are
        # malformed rows, reported by the job, that no index could hold
        summary = summaries[-1] if summaries else None
        if summary is None:  # the versioned index already existed and is live
            return ro.count_documents(backend.client, ro.versioned_name(alias, model_hash))
        return summary["indexed"] + summary["skipped"]

    result = ro.rollout(
        backend.client,
        alias,
        model_hash,
        build=build,
        expected_count=expected,
        create=backend.create,
        meta={"model_path": str(cfg.model.path), "run_name": cfg.run_name},
        keep_previous=settings.keep_previous,
        count_tolerance=settings.count_tolerance,
        hash_length=settings.hash_length,
        rebuild=rebuild,
    )
    return result.to_json()


def run_rollback(cfg, to_index: str | None = None) -> dict[str, Any]:
    """Point the alias back at the previous (or the named) kept version."""
    backend = _client(cfg)
    alias = cfg.index.rollout.alias or cfg.index.name
    return dict(ro.rollback(backend.client, alias, to_index or None).__dict__)
