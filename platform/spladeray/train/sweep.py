"""Validation sweeps: train variants of one config and rank them on validation queries only.

A sweep file (``configs/sweeps/*.yaml``) names ``variants`` (``name`` + ``set``: the
``dotted.key=value`` overrides of that variant) and ``overrides`` applied to every variant first
(the validation evaluation, step counts). Each variant is a separate training run
(``train.name`` = ``<sweep>-<variant>``) on the same prepared data and the same Ray cluster; its
final report's ``eval/*`` metrics are the variant's row. The base config's test split (the
``data:``/``evaluate:`` sections) is never evaluated here: that is the point of the protocol in
docs/train.md ("Selection protocol").
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from spladeray import console, storage
from spladeray.config import ConfigError, load_config

logger = logging.getLogger(__name__)

COLUMNS = ("nDCG@10", "R@100", "doc_active_dims", "query_active_dims")


@dataclass
class SweepRow:
    """One variant's result: validation metrics at the last step, and its training speed."""

    variant: str
    overrides: list[str]
    metrics: dict[str, float]
    steps: int
    steps_per_s: float | None
    seconds: float


def load_sweep(path: str | Path) -> dict[str, Any]:
    """Read and check a sweep file: ``{name?, overrides?: [..], variants: [{name, set: [..]}]}``."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"sweep file {path}: {exc}") from None
    variants = spec.get("variants")
    if not isinstance(variants, list) or not variants:
        raise ConfigError(f"sweep file {path}: 'variants' must be a non-empty list")
    names = [v.get("name") if isinstance(v, dict) else None for v in variants]
    if not all(
        isinstance(n, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", n) for n in names
    ):
        raise ConfigError(
            f"sweep file {path}: every variant needs a name of [A-Za-z0-9_.-] (it is part of a run name)"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"sweep file {path}: variant names repeat: {names}")
    spec.setdefault("name", path.stem)
    spec.setdefault("overrides", [])
    return spec


def variant_configs(config_path: str | Path, spec: dict[str, Any], extra: list[str]):
    """``(variant name, overrides, Config)`` for each variant; all are validated before any runs."""
    out = []
    for v in spec["variants"]:
        overrides = [*spec["overrides"], *extra, *v.get("set", [])]
        overrides.append(f"train.name={spec['name']}-{v['name']}")
        cfg = load_config(config_path, overrides)
        if cfg.train is None or cfg.train.eval is None or cfg.train.eval.holdout is None:
            raise ConfigError(
                f"variant {v['name']}: a sweep ranks on validation queries, so train.eval needs "
                "a holdout (e.g. {part: validation, fraction: 0.15, seed: 0})"
            )
        out.append((v["name"], v.get("set", []), cfg))
    return out


def run_sweep(config_path: str | Path, spec: dict[str, Any], extra: list[str] | None = None):
    """Train every variant in turn; return the rows and write ``sweep.json`` + ``sweep.md`` under
    ``<train.output_dir>/<sweep name>/``. A variant that is already finished resumes and stops at
    once (its run name is stable), so an interrupted sweep continues where it stopped."""
    from spladeray.train.trainer import run_train

    variants = variant_configs(config_path, spec, list(extra or []))
    rows: list[SweepRow] = []
    for i, (name, overrides, cfg) in enumerate(variants):
        logger.info("sweep %s: variant %d/%d %s", spec["name"], i + 1, len(variants), name)
        console.sweep_variant(i + 1, len(variants))
        result = run_train(cfg, prepare=True, export=False)
        m = result.metrics
        rows.append(
            SweepRow(
                variant=name,
                overrides=list(overrides),
                metrics={c: float(m[f"eval/{c}"]) for c in COLUMNS if f"eval/{c}" in m},
                steps=int(m.get("step", 0)),
                steps_per_s=m.get("steps_per_s"),
                seconds=result.seconds,
            )
        )
    console.sweep_done()
    out_dir = storage.join(variants[0][2].train.output_dir, spec["name"])
    storage.write_text(
        storage.join(out_dir, "sweep.json"), json.dumps([asdict(r) for r in rows], indent=2)
    )
    runs = {name: storage.join(cfg.train.output_dir, cfg.train.name) for name, _, cfg in variants}
    write_sweep_report(out_dir, spec["name"], rows, runs)
    return rows


def write_sweep_report(out_dir: str, sweep: str, rows: list[SweepRow], runs: dict[str, str]):
    """``sweep.png`` (every variant's evaluated checkpoints, from their ``metrics.jsonl``; the
    chosen variant starred) and ``sweep.md`` (the chosen variant, the table, the picture)."""
    import tempfile

    from spladeray.train.curves import plot_sweep, sweep_points

    ranked = sorted(rows, key=lambda r: -r.metrics.get("nDCG@10", float("-inf")))
    chosen = ranked[0].variant if ranked and "nDCG@10" in ranked[0].metrics else None
    try:
        with tempfile.TemporaryDirectory(prefix="spladeray-sweep-") as tmp:
            points = {name: sweep_points(run) for name, run in runs.items()}
            storage.upload(
                plot_sweep(points, chosen, Path(tmp) / "sweep.png"),
                storage.join(out_dir, "sweep.png"),
            )
        picture = "![validation nDCG@10 against document dims](sweep.png)\n"
    except Exception:  # the table still gets written
        logger.warning("could not draw sweep.png", exc_info=True)
        picture = ""
    best = ranked[0].metrics if chosen else {}
    head = (
        f"chosen on validation: **{chosen}** (nDCG@10 {best['nDCG@10']:.4f} at "
        f"{best.get('doc_active_dims', float('nan')):.0f} doc dims)"
        if chosen
        else "no variant has a validation nDCG@10"
    )
    text = f"# sweep {sweep}\n\n{head}\n\n{sweep_table(rows)}\n\n{picture}"
    storage.write_text(storage.join(out_dir, "sweep.md"), text)


def sweep_table(rows: list[SweepRow]) -> str:
    """Markdown: one row per variant, best validation nDCG@10 first."""
    lines = [
        "| variant | val nDCG@10 | val R@100 | doc dims | query dims | steps/s | overrides |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in sorted(rows, key=lambda r: -r.metrics.get("nDCG@10", float("-inf"))):
        m = r.metrics
        speed = f"{r.steps_per_s:.2f}" if r.steps_per_s else "–"
        lines.append(
            f"| {r.variant} | {m.get('nDCG@10', float('nan')):.4f} | "
            f"{m.get('R@100', float('nan')):.4f} | {m.get('doc_active_dims', float('nan')):.0f} | "
            f"{m.get('query_active_dims', float('nan')):.0f} | {speed} | "
            f"{'; '.join(r.overrides) or '(base)'} |"
        )
    return "\n".join(lines)
