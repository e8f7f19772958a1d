"""``jobs/index.py --rollout`` / ``--rollback``: zero-downtime model switches on OpenSearch.

A rollout builds ``<alias>-<model hash>`` with the Ray Data bulk job (:mod:`spladeray.index.bulk`),
checks that it holds every accepted source document, and only then swaps the alias in one atomic
``_aliases`` call; the previous index is kept for :func:`run_rollback`. See
:mod:`spladeray.index.rollout`.
"""

from __future__ import annotations

from typing import Any

from spladeray.index import open_index
from spladeray.index import rollout as ro
from spladeray.index.bulk import IndexSummary, run_index


def _open(cfg):
    if cfg.index.backend != "opensearch":
        raise ValueError(
            f"{cfg.source}: --rollout/--rollback need index.backend: opensearch (aliases are an "
            "OpenSearch feature; the embedded index is rebuilt in place)"
        )
    return open_index(cfg.index, tokenizer=cfg.model.path)


def run_rollout(cfg, *, limit: int | None = None, rebuild: bool = False) -> dict[str, Any]:
    """Index the corpus into a new versioned index and move the alias to it."""
    from spladeray.model.loading import load_encoder_from_config, resolve_model_dir

    index = _open(cfg)
    settings = cfg.index.rollout
    alias = settings.alias or cfg.index.name
    encoder = load_encoder_from_config(cfg.model.model_copy(update={"device": "cpu"}))
    model_hash = ro.model_hash_from_encoder(encoder)
    del encoder
    summaries: list[IndexSummary] = []

    def build(name: str) -> None:
        job_cfg = cfg.model_copy(update={"index": cfg.index.model_copy(update={"name": name})})
        summary = run_index(job_cfg, limit=limit)
        summaries.append(summary)
        if summary.failed:
            raise ro.RolloutError(
                f"{summary.failed} documents failed to index into {name}; the alias was not "
                f"moved (first failures: {summary.failures[:3]})"
            )

    def expected() -> int:
        # every source row the job accepted: indexed + skipped (already there); rejects are
        # malformed rows, reported by the job, that no index could hold
        if not summaries:  # the versioned index already existed and is live
            return ro.count_documents(index, ro.versioned_name(alias, model_hash))
        return summaries[-1].indexed + summaries[-1].skipped

    try:
        result = ro.rollout(
            index,
            alias,
            model_hash,
            build=build,
            expected_count=expected,
            create=index.create,
            meta={
                "model_path": str(cfg.model.path),
                "run_name": cfg.run_name,
                # what a Serve replica checks before it serves this model (serving/security.py)
                "model_files_sha256": ro.model_hash_from_dir(
                    resolve_model_dir(str(cfg.model.path))
                ),
            },
            keep_previous=settings.keep_previous,
            count_tolerance=settings.count_tolerance,
            hash_length=settings.hash_length,
            rebuild=rebuild,
        )
    finally:
        index.close()
    return result.to_json()


def run_rollback(cfg, to_index: str | None = None) -> dict[str, Any]:
    """Point the alias back at the previous (or the named) kept version."""
    index = _open(cfg)
    alias = cfg.index.rollout.alias or cfg.index.name
    try:
        return dict(ro.rollback(index, alias, to_index or None).__dict__)
    finally:
        index.close()
