"""A training run's curves as files a person opens: ``metrics.jsonl`` and ``curves.png``.

Rank 0 keeps every report's scalars (:class:`CurveLog`) in ``<output_dir>/<run>/metrics.jsonl``
(rewritten at each checkpoint and at the end, so a resumed run continues the same curves); when
the run is over, the driver draws ``curves.png`` next to it (:func:`draw_run_curves`, in a
thread, so that the next stage does not wait for matplotlib): the loss terms, the learning rate, the FLOPS
lambdas, the query and document active dimensions, and validation nDCG@10 (with BM25 and the
start-of-run model as dashed lines) against the step. matplotlib's Agg backend: headless.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from spladeray import storage

logger = logging.getLogger(__name__)

HISTORY_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


class CurveLog:
    """Every report's scalars of one run, kept in ``<run_dir>/metrics.jsonl``."""

    def __init__(self, run_dir: str, step: int) -> None:
        self.run_dir = run_dir
        self.rows: list[dict[str, float]] = []
        uri = storage.join(run_dir, HISTORY_FILE)
        if step > 0 and storage.exists(uri):  # a resume: the curves so far, up to its step
            rows = [json.loads(line) for line in storage.read_text(uri).splitlines() if line]
            self.rows = [r for r in rows if r.get("step", 0) <= step]

    def add(self, metrics: dict[str, Any]) -> None:
        row = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        self.rows = [r for r in self.rows if r.get("step") != row.get("step")] + [row]

    def save(self) -> None:
        text = "".join(json.dumps(r) + "\n" for r in self.rows)
        storage.write_text(storage.join(self.run_dir, HISTORY_FILE), text)


def draw_run_curves(run_dir: str) -> None:
    """``<run_dir>/curves.png`` from ``<run_dir>/metrics.jsonl``; a warning, never an error."""
    uri = storage.join(run_dir, HISTORY_FILE)
    try:
        if not storage.exists(uri):  # e.g. a run that did not report from this code
            logger.info("no %s: no %s drawn", uri, CURVES_FILE)
            return
        rows = [json.loads(line) for line in storage.read_text(uri).splitlines() if line]
        with tempfile.TemporaryDirectory(prefix="spladeray-curves-") as tmp:
            local = plot_curves(rows, Path(tmp) / CURVES_FILE)
            storage.upload(local, storage.join(run_dir, CURVES_FILE))
    except Exception:  # a picture never fails a finished training run
        logger.warning("could not draw %s in %s", CURVES_FILE, run_dir, exc_info=True)


def draw_run_curves_in_background(run_dir: str):
    """:func:`draw_run_curves` in a (non-daemon: the process waits for it at exit) thread."""
    import threading

    thread = threading.Thread(target=draw_run_curves, args=(run_dir,), name="spladeray-curves")
    thread.start()
    return thread


def plot_curves(rows: list[dict[str, float]], path: str | Path) -> Path:
    """Draw the six panels of ``curves.png`` from report rows (``step`` plus scalars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted((r for r in rows if "step" in r), key=lambda r: r["step"])

    def series(key: str):
        pts = [(r["step"], r[key]) for r in rows if key in r and r["step"] > 0]
        return [p[0] for p in pts], [p[1] for p in pts]

    keys = sorted({k for r in rows for k in r})
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    panels = [
        ("loss terms", [k for k in keys if k == "loss" or k.startswith("loss/")], "log"),
        ("learning rate", ["lr"], "linear"),
        ("FLOPS lambda", [k for k in keys if k.startswith("lambda/")], "linear"),
        ("active dims", ["active_dims/query", "active_dims/document"], "linear"),
        ("validation nDCG@10", ["eval/nDCG@10"], "linear"),
        ("throughput (samples/s)", ["samples_per_s"], "linear"),
    ]
    for ax, (title, wanted, scale) in zip(axes.flat, panels, strict=True):
        for key in wanted:
            xs, ys = series(key)
            start = next((r["eval_start/nDCG@10"] for r in rows if "eval_start/nDCG@10" in r), None)
            if key == "eval/nDCG@10" and start is not None:  # the curve starts at step 0
                xs, ys = [0.0, *xs], [start, *ys]
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=key)
        if title == "validation nDCG@10":
            for key, label, color in (
                ("bm25/nDCG@10", "BM25", "#7f7f7f"),
                ("eval_start/nDCG@10", "at start", "#1f77b4"),
            ):
                value = next((r[key] for r in rows if key in r), None)
                if value is not None:
                    ax.axhline(value, ls="--", color=color, lw=1, label=f"{label} {value:.3f}")
        if scale == "log" and all(v > 0 for k in wanted for v in series(k)[1]):
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def sweep_points(run_dir: str) -> list[tuple[int, float, float]]:
    """``(step, validation doc dims, validation nDCG@10)`` at each evaluation of one run (its
    ``metrics.jsonl``); the start-of-run evaluation is step 0."""
    uri = storage.join(run_dir, HISTORY_FILE)
    if not storage.exists(uri):
        return []
    points = []
    for line in storage.read_text(uri).splitlines():
        row = json.loads(line) if line else {}
        for prefix in ("eval", "eval_start"):
            if f"{prefix}/nDCG@10" in row and f"{prefix}/doc_active_dims" in row:
                step = 0 if prefix == "eval_start" else int(row["step"])
                points.append((step, row[f"{prefix}/doc_active_dims"], row[f"{prefix}/nDCG@10"]))
    return sorted(set(points))


def plot_sweep(
    points: dict[str, list[tuple[int, float, float]]], chosen: str | None, path: str | Path
) -> Path:
    """``sweep.png``: validation nDCG@10 against document active dims, one point per variant and
    evaluated checkpoint (a line per variant in step order, its steps written at the points);
    the chosen variant's last point is marked with a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    start = None
    for name, pts in points.items():
        trained = [p for p in pts if p[0] > 0]
        start = start or next((p for p in pts if p[0] == 0), None)
        if not trained:
            continue
        xs, ys = [p[1] for p in trained], [p[2] for p in trained]
        (line,) = ax.plot(xs, ys, marker="o", lw=1, alpha=0.8, label=name)
        for step, x, y in trained:
            ax.annotate(str(step), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if name == chosen:
            ax.scatter(
                [xs[-1]],
                [ys[-1]],
                marker="*",
                s=320,
                color=line.get_color(),
                zorder=5,
                edgecolors="black",
                label=f"chosen: {name} ({ys[-1]:.4f})",
            )
    if start is not None:
        ax.scatter([start[1]], [start[2]], marker="s", color="#7f7f7f", label="start of training")
    ax.set_xlabel("validation document active dims (mean non-zero per document)")
    ax.set_ylabel("validation nDCG@10")
    ax.set_title("sweep: quality against sparsity (labels: step)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
