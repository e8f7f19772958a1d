"""Validation sweeps: train variants of one config and rank them on validation queries only.

A sweep file (``configs/sweeps/*.yaml``) names ``variants`` (``name`` + ``set``: the
``dotted.key=value`` overrides of that variant) and ``overrides`` applied to every variant first
(the validation evaluation, step counts). Each variant is a separate training run
(``train.name`` = ``<sweep>-<variant>``) on the same Ray cluster; its final report's ``eval/*``
metrics are the variant's row. The base config's test split (the ``data:``/``evaluate:``
sections) is never evaluated here: that is the point of the protocol in docs/train.md
("Selection protocol").

The variants run as the trials of one Ray Tune experiment (:mod:`spladeray.train.sweep_tune`):
``concurrency`` (sweep file, default 1; ``jobs/sweep.py --concurrency``) trials train side by
side, and Tune restarts a failed trial up to ``max_failures`` times (default 1; the restart
resumes the run from its last checkpoint, as re-running a variant does). A variant that still
fails does not stop the others: its row carries the error (no metrics, last in the table,
``sweep.json`` / ``sweep.md`` say so), :func:`run_sweep` logs it and ``jobs/sweep.py`` exits
non-zero naming it. Re-running the sweep resumes: finished variants stop at once, the failed one
trains again. ``run_sweep(..., sequential=True)`` is the plain loop in the driver (no Tune), the
reference that concurrency 1 reproduces.
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
    error: str | None = None  # the trial failed after its retries (no metrics then)


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
    for key, default, least in (("concurrency", 1, 1), ("max_failures", 1, 0)):
        spec[key] = check_count(spec.get(key, default), least, f"sweep file {path}: {key}")
    return spec


def check_count(value: Any, least: int, what: str) -> int:
    """``value`` as an int of at least ``least``, else a :class:`ConfigError` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{what} must be a whole number >= {least}, got {value!r}")
    return value


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


def run_sweep(
    config_path: str | Path,
    spec: dict[str, Any],
    extra: list[str] | None = None,
    *,
    concurrency: int | None = None,
    max_failures: int | None = None,
    sequential: bool = False,
) -> list[SweepRow]:
    """Train every variant; return the rows in the sweep file's order and write ``sweep.json``
    + ``sweep.md`` under ``<train.output_dir>/<sweep name>/``. ``concurrency`` / ``max_failures``
    override the sweep file's. A variant that is already finished resumes and stops at once (its
    run name is stable), so an interrupted sweep continues where it stopped."""
    variants = variant_configs(config_path, spec, list(extra or []))
    if sequential:
        rows = run_in_turn(variants, spec["name"])
    else:
        from spladeray.train.sweep_tune import run_on_tune

        rows = run_on_tune(
            variants,
            spec["name"],
            concurrency=check_count(
                spec.get("concurrency", 1) if concurrency is None else concurrency,
                1,
                "sweep concurrency",
            ),
            max_failures=check_count(
                spec.get("max_failures", 1) if max_failures is None else max_failures,
                0,
                "sweep max_failures",
            ),
        )
    for row in rows:
        if row.error:
            logger.error("sweep %s: variant %s failed: %s", spec["name"], row.variant, row.error)
    out_dir = sweep_dir(variants, spec["name"])
    storage.write_text(
        storage.join(out_dir, "sweep.json"), json.dumps([asdict(r) for r in rows], indent=2)
    )
    runs = {name: storage.join(cfg.train.output_dir, cfg.train.name) for name, _, cfg in variants}
    write_sweep_report(out_dir, spec["name"], rows, runs)
    return rows


def sweep_dir(variants, sweep: str) -> str:
    """``<train.output_dir>/<sweep>/`` of the first variant: the report, and Tune's ``tune/``."""
    return storage.join(variants[0][2].train.output_dir, sweep)


def row_of(name: str, overrides: list[str], metrics: dict[str, Any], seconds: float) -> SweepRow:
    """A variant's row from its run's last report (``eval/*``, ``step``, ``steps_per_s``)."""
    speed = metrics.get("steps_per_s")
    return SweepRow(
        variant=name,
        overrides=list(overrides),
        metrics={c: float(metrics[f"eval/{c}"]) for c in COLUMNS if f"eval/{c}" in metrics},
        steps=int(metrics.get("step", 0)),
        steps_per_s=float(speed) if speed is not None else None,
        seconds=float(seconds),
    )


def run_in_turn(variants, sweep: str) -> list[SweepRow]:
    """The sweep without Tune: each variant in the driver, one after another (each prepares its
    data first when its config prepares ``train.data_dir``); the first failure stops it."""
    from spladeray.train.trainer import run_train

    rows: list[SweepRow] = []
    for i, (name, overrides, cfg) in enumerate(variants):
        logger.info("sweep %s: variant %d/%d %s", sweep, i + 1, len(variants), name)
        console.sweep_variant(i + 1, len(variants))
        result = run_train(cfg, prepare=True, export=False)
        rows.append(row_of(name, overrides, result.metrics, result.seconds))
    console.sweep_done()
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
    """Markdown: one row per variant, best validation nDCG@10 first (a failed variant last)."""
    lines = [
        "| variant | val nDCG@10 | val R@100 | doc dims | query dims | steps/s | overrides |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in sorted(rows, key=lambda r: -r.metrics.get("nDCG@10", float("-inf"))):
        m = r.metrics
        if r.error:
            error = r.error.strip().splitlines()[-1] if r.error.strip() else "error"
            lines.append(f"| {r.variant} | failed | | | | | {error.replace('|', '/')} |")
            continue
        speed = f"{r.steps_per_s:.2f}" if r.steps_per_s else "–"
        lines.append(
            f"| {r.variant} | {m.get('nDCG@10', float('nan')):.4f} | "
            f"{m.get('R@100', float('nan')):.4f} | {m.get('doc_active_dims', float('nan')):.0f} | "
            f"{m.get('query_active_dims', float('nan')):.0f} | {speed} | "
            f"{'; '.join(r.overrides) or '(base)'} |"
        )
    return "\n".join(lines)
