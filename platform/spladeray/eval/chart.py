"""The chart people look at: quality against active dimensions (and latency), one point per system.

Left panel: the first measure (nDCG@10 by default) against the average number of active
dimensions per document (log scale; a dense model's dimension, a hybrid's sum of its parts).
Right panel: the same quality against p50 query latency. Written with matplotlib's Agg backend,
so it works on headless machines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

KIND_STYLE = {
    "bm25": ("#7f7f7f", "s"),
    "sparse": ("#d62728", "o"),
    "dense": ("#1f77b4", "^"),
    "hybrid": ("#9467bd", "D"),
}


# Label positions tried in order (offset in points, horizontal alignment) until one is free.
_OFFSETS = [
    ((8, 6), "left"),
    ((8, -14), "left"),
    ((-8, 6), "right"),
    ((-8, -14), "right"),
    ((8, 18), "left"),
    ((8, -26), "left"),
    ((-8, 18), "right"),
    ((-8, -26), "right"),
]


def _place_labels(ax, shown: list[dict[str, Any]], xkey: str) -> None:
    """Annotate each point where its label overlaps no other label or marker."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    taken = []
    for p in shown:  # the markers themselves
        x, y = ax.transData.transform((p[xkey], p["quality"]))
        taken.append((x - 7, y - 7, x + 7, y + 7))

    def free(box) -> bool:
        x0, y0, x1, y1 = box
        return all(x1 < a0 or x0 > a1 or y1 < b0 or y0 > b1 for a0, b0, a1, b1 in taken)

    for p in sorted(shown, key=lambda q: -q["quality"]):
        ann = None
        for offset, ha in _OFFSETS:
            if ann is not None:
                ann.remove()
            ann = ax.annotate(
                p["name"],
                (p[xkey], p["quality"]),
                xytext=offset,
                textcoords="offset points",
                ha=ha,
                fontsize=9,
            )
            ext = ann.get_window_extent(renderer)
            box = (ext.x0 - 2, ext.y0 - 2, ext.x1 + 2, ext.y1 + 2)
            if free(box):
                break
        taken.append(box)


def _panel(ax, points: list[dict[str, Any]], xkey: str, xlabel: str, ylabel: str) -> None:
    shown = [p for p in points if p.get(xkey) and p.get("quality") is not None]
    for p in shown:
        color, marker = KIND_STYLE.get(p["kind"], ("#2ca02c", "o"))
        ax.scatter(
            p[xkey],
            p["quality"],
            s=110,
            c=color,
            marker=marker,
            zorder=3,
            edgecolors="black",
            linewidths=0.6,
            label=p["kind"],
        )
    if shown and all(p[xkey] > 0 for p in shown):
        ax.set_xscale("log")
        lo = min(p[xkey] for p in shown)
        hi = max(p[xkey] for p in shown)
        ax.set_xlim(lo / 2.0, hi * 3.0)  # room for the labels on both sides
    if shown:
        qs = [p["quality"] for p in shown]
        pad = max(0.02, (max(qs) - min(qs)) * 0.2)
        ax.set_ylim(max(0.0, min(qs) - pad), min(1.0, max(qs) + pad))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)


def quality_chart(
    points: list[dict[str, Any]], path: str | Path, *, metric: str = "nDCG@10", title: str = ""
) -> Path:
    """Write the PNG. ``points``: ``{"name", "kind", "quality", "doc_dims", "latency_ms"}``."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), dpi=110)
    _panel(left, points, "doc_dims", "active dimensions per document (avg, log)", metric)
    left.set_title(f"{metric} vs document active dimensions")
    _panel(right, points, "latency_ms", "query latency p50, ms (encode + search, log)", metric)
    right.set_title(f"{metric} vs query latency")
    fig.tight_layout(rect=(0, 0.06, 1, 0.95 if title else 1))
    for ax, xkey in ((left, "doc_dims"), (right, "latency_ms")):
        _place_labels(ax, [p for p in points if p.get(xkey) and p.get("quality") is not None], xkey)
    handles, labels = left.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    if unique:
        fig.legend(
            unique.values(), unique.keys(), loc="lower center", ncol=len(unique), frameon=False
        )
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95 if title else 1))
    fig.savefig(path)
    plt.close(fig)
    return path
