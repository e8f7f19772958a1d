"""A Hugging Face Hub-ready model directory: ``save_pretrained`` plus a model card.

The directory is exactly what :meth:`SpladeEncoder.save_pretrained` writes (loadable by
``sentence_transformers.SparseEncoder``, ``transformers.AutoModelForMaskedLM`` and spladeray),
plus ``README.md``: YAML front matter (``base_model``, ``library_name: sentence-transformers``,
``pipeline_tag``, ``license``, ``tags``) and a card with the training config, the evaluation
table (nDCG@10, R@100, active dimensions of queries and documents, read from the run's
evaluation report ``<evaluate.output_dir>/results.json`` when there is one) and usage snippets
for spladeray, sentence-transformers, transformers and OpenSearch.

:func:`push_to_hub` uploads the directory with ``huggingface_hub`` (needs a token and the
network; ``jobs/export.py --format hf --push-to-hub REPO`` only).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from string import Template
from typing import Any

import yaml

from spladeray import storage
from spladeray.model.encoder import SpladeEncoder
from spladeray.redaction import redact_config

LICENSE_PLACEHOLDER = "other"  # set export.license (an SPDX id) before publishing
MEASURES = ("nDCG@10", "R@100")
CARD_TEMPLATE = Path(__file__).with_name("model_card.md")
CURVES = "curves.png"


def read_eval_report(path: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """``results.json`` of ``jobs/evaluate.py`` (a file, or the directory holding it), or None."""
    if path is None:
        return None
    uri = os.fspath(path)
    if not uri.endswith(".json"):
        uri = storage.join(uri, "results.json")
    try:
        return json.loads(storage.read_text(uri))
    except (FileNotFoundError, OSError, ValueError):
        return None


def evaluation_table(report: dict[str, Any] | None) -> str:
    """Markdown rows of the report's systems: nDCG@10, R@100, active dims (query / document)."""
    if not report:
        return "Not evaluated: no evaluation report was found for this run (`jobs/evaluate.py`).\n"
    datasets = ", ".join(
        f"{d.get('name', '?')} {d.get('split', '')} ({d.get('documents', '?')} docs, "
        f"{d.get('queries', '?')} queries)"
        for d in report.get("datasets", [])
    )
    lines = [
        f"{report.get('title', 'Evaluation')}: {datasets}.",
        "",
        "| system | kind | nDCG@10 | R@100 | active dims (query) | active dims (document) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in report.get("average", {}).items():
        metrics, sparsity = row.get("metrics", {}), row.get("sparsity") or {}

        def cell(value: Any, digits: int) -> str:
            return "–" if value is None else f"{value:.{digits}f}"

        lines.append(
            f"| {name} | {row.get('kind', '')} | {cell(metrics.get('nDCG@10'), 4)} | "
            f"{cell(metrics.get('R@100'), 4)} | {cell(sparsity.get('query_dims_avg'), 0)} | "
            f"{cell(sparsity.get('doc_dims_avg'), 0)} |"
        )
    return "\n".join(lines) + "\n"


def front_matter(
    encoder: SpladeEncoder, *, base_model: str | None, license: str | None
) -> dict[str, Any]:
    """The card's YAML metadata (the Hub reads it; sentence-transformers writes the same keys)."""
    meta: dict[str, Any] = {}
    if base_model:
        meta["base_model"] = base_model
    meta["library_name"] = "sentence-transformers"
    meta["pipeline_tag"] = "feature-extraction"
    meta["license"] = license or LICENSE_PLACEHOLDER
    meta["tags"] = [
        "sentence-transformers",
        "sparse-encoder",
        "sparse",
        "splade",
        "learned-sparse-retrieval",
        "opensearch",
        "spladeray",
    ] + (["inference-free"] if encoder.doc_only else [])
    return meta


def model_card(
    encoder: SpladeEncoder,
    *,
    name: str,
    base_model: str | None = None,
    license: str | None = None,
    train_config: dict[str, Any] | None = None,
    eval_report: dict[str, Any] | None = None,
    curves: str | None = None,
) -> str:
    """``README.md`` text: YAML front matter, then the card (:data:`CARD_TEMPLATE`, a
    ``string.Template``; ``curves``: the training curves' file name next to the card)."""
    meta = front_matter(encoder, base_model=base_model, license=license)
    header = yaml.safe_dump(meta, sort_keys=False)
    if not license:
        header += "# license: a placeholder -- set export.license (an SPDX id) before publishing\n"
    kind = "inference-free (doc-only) " if encoder.doc_only else ""
    query_side = (
        "Queries are not run through the model: each distinct query token gets its IDF weight "
        "(`idf.json`), so query encoding costs a tokenizer call."
        if encoder.doc_only
        else "Queries and documents go through the same model."
    )
    training = (  # credentials a ${VAR} put into the config never reach a published card
        "```yaml\n" + yaml.safe_dump(redact_config(train_config), sort_keys=False) + "```\n"
        if train_config
        else "Not trained by spladeray (no training config in this run).\n"
    )
    values = {
        "header": header,
        "name": name,
        "kind": kind,
        "pooling": encoder.pooling,
        "activation": encoder.activation,
        "query_side": query_side,
        "base_from": f"from `{base_model}`" if base_model else "",
        "vocab_size": f"{encoder.vocab_size:,}",
        "max_query_length": encoder.max_query_length,
        "max_document_length": encoder.max_document_length,
        "top_k": encoder.top_k,
        "threshold": encoder.threshold,
        "evaluation": evaluation_table(eval_report),
        "curves": (
            f"![training curves]({curves})\n\nLoss terms, learning rate, FLOPS lambdas, active "
            "dimensions and validation nDCG@10 against the step (spladeray's `curves.png`).\n"
            if curves
            else "No training curves in this run.\n"
        ),
        "training": training,
        "mlm_name": name.split("/")[-1],
        "pool_fn": "amax" if encoder.pooling == "max" else "sum",
    }
    return Template(CARD_TEMPLATE.read_text(encoding="utf-8")).substitute(values)


def export_hf(
    encoder: SpladeEncoder,
    output_dir: str | os.PathLike[str],
    *,
    name: str,
    base_model: str | None = None,
    license: str | None = None,
    train_config: dict[str, Any] | None = None,
    eval_report: dict[str, Any] | None = None,
    curves: str | os.PathLike[str] | None = None,
) -> Path | str:
    """``save_pretrained`` into ``output_dir`` (a local dir or a URI) plus ``README.md``; with
    ``curves`` (a training run's ``curves.png``, a path or URI) the picture is copied next to the
    card, which shows it."""
    uri = os.fspath(output_dir)
    with storage.staged_dir(uri) as out:
        encoder.save_pretrained(str(out))
        if curves is not None:
            (Path(out) / CURVES).write_bytes(storage.read_bytes(curves))
        card = model_card(
            encoder,
            name=name,
            base_model=base_model,
            license=license,
            train_config=train_config,
            eval_report=eval_report,
            curves=CURVES if curves is not None else None,
        )
        (Path(out) / "README.md").write_text(card, encoding="utf-8")
        local = Path(out)
    return uri if storage.is_remote(uri) else local


def read_front_matter(readme: str) -> dict[str, Any]:
    """The YAML metadata block of a model card (``---`` ... ``---`` at the top)."""
    if not readme.startswith("---\n"):
        raise ValueError("the model card does not start with YAML front matter ('---')")
    end = readme.find("\n---", 4)
    if end < 0:
        raise ValueError("the model card's YAML front matter is not closed ('---')")
    meta = yaml.safe_load(readme[4:end])
    if not isinstance(meta, dict):
        raise ValueError("the model card's front matter is not a YAML mapping")
    return meta


def push_to_hub(directory: str | os.PathLike[str], repo_id: str, *, private: bool = True) -> str:
    """Create ``repo_id`` (private by default) and upload the directory; returns the repo URL.

    Needs a Hugging Face token (``HF_TOKEN`` or ``huggingface-cli login``) and the network.
    ``create_repo(exist_ok=True)`` keeps an existing repo as it is, so with ``private`` an existing
    *public* repo is refused before anything is uploaded into it.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    if private and not api.repo_info(repo_id).private:
        raise ValueError(
            f"{repo_id} already exists and is public; refusing to upload a private=True export "
            "into it (make it private on the Hub, or push with private=False on purpose)"
        )
    api.upload_folder(folder_path=str(directory), repo_id=repo_id)
    return str(url)


def export_hf_from_config(cfg, output_dir: str | None = None) -> Path | str:
    """Load ``cfg.model`` and write the Hub-ready directory (default ``<export.output_dir>/hf``)
    with the run's training config and evaluation report (``evaluate.output_dir``)."""
    from spladeray.config import ExportConfig
    from spladeray.model.loading import load_encoder_from_config

    ecfg = cfg.export or ExportConfig()
    out = output_dir or storage.join(os.fspath(ecfg.output_dir), "hf")
    encoder = load_encoder_from_config(cfg.model.model_copy(update={"device": "cpu"}))
    train_config = cfg.train.model_dump(mode="json") if cfg.train is not None else None
    report = read_eval_report(cfg.evaluate.output_dir) if cfg.evaluate is not None else None
    base = encoder.metadata.get("base_model") or _hub_id(str(cfg.model.path))
    return export_hf(
        encoder,
        out,
        curves=_run_curves(cfg),
        name=ecfg.name or cfg.run_name,
        base_model=base,
        license=ecfg.license,
        train_config=train_config,
        eval_report=report,
    )


def _run_curves(cfg) -> str | None:
    """The training run's ``curves.png``: next to the exported model (``<run>/model``), else
    in the config's own run directory (``<train.output_dir>/<train.name or run_name>``)."""
    places = [storage.join(os.path.dirname(str(cfg.model.path).rstrip("/")), CURVES)]
    if cfg.train is not None:
        places.append(storage.join(cfg.train.output_dir, cfg.train.name or cfg.run_name, CURVES))
    return next((p for p in places if storage.exists(p)), None)


def _hub_id(path: str) -> str | None:
    """``owner/name`` when ``path`` looks like a hub id rather than a local path."""
    if path.count("/") == 1 and not path.startswith((".", "/", "~")) and not Path(path).exists():
        return path
    return None


__all__ = [
    "evaluation_table",
    "export_hf",
    "export_hf_from_config",
    "front_matter",
    "model_card",
    "push_to_hub",
    "read_eval_report",
    "read_front_matter",
]
