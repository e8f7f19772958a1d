"""Reports: the evaluation table (markdown), JSON, the chart; the bench report and README section."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spladeray.eval.metrics import display_name

README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _dims(avg: float | None, p95: float | None) -> str:
    if avg is None:
        return "–"
    return f"{avg:,.0f}" + (f" / {p95:,.0f}" if p95 is not None else "")


def results_markdown(results) -> str:
    """The table of the dataset average, plus a per-dataset table of the first measure."""
    measures = list(results.measures)
    lines = [f"### {results.title}", ""]
    ds = ", ".join(
        f"{d['name']} ({d['split']}: {d['documents']:,} docs, {d['queries']:,} queries)"
        for d in results.datasets
    )
    lines.append(
        f"Datasets: {ds}." + (" Averaged over datasets." if len(results.datasets) > 1 else "")
    )
    lines.append("")
    head = (
        ["system", "kind"]
        + [display_name(m) for m in measures]
        + ["query dims avg / p95", "doc dims avg / p95", "FLOPS", "latency p50 / p99 ms", "docs/s"]
    )
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|")
    for name, r in results.average.items():
        s = r.sparsity or {}
        lat = r.latency_ms or {}
        lat_txt = f"{lat['p50']:.1f} / {lat['p99']:.1f}" if lat.get("p50") is not None else "–"
        row = (
            [name, r.kind]
            + [f"{r.metrics.get(m, float('nan')):.4f}" for m in measures]
            + [
                _dims(s.get("query_dims_avg"), s.get("query_dims_p95")),
                _dims(s.get("doc_dims_avg"), s.get("doc_dims_p95")),
                _num(s.get("flops")),
                lat_txt,
                _num(r.docs_per_s),
            ]
        )
        lines.append("| " + " | ".join(row) + " |")
    if len(results.per_dataset) > 1:
        first = measures[0]
        names = list(results.per_dataset)
        lines += ["", f"{display_name(first)} per dataset:", ""]
        lines.append("| system | " + " | ".join(names) + " | average |")
        lines.append("|---|" + "---:|" * (len(names) + 1))
        for system, avg in results.average.items():
            vals = [results.per_dataset[d][system].metrics[first] for d in names]
            lines.append(
                f"| {system} | "
                + " | ".join(f"{v:.4f}" for v in vals)
                + f" | {avg.metrics[first]:.4f} |"
            )
    lines += [
        "",
        "Dims: non-zero dimensions per vector (BM25: distinct stemmed terms; dense: the "
        "embedding size; hybrid: the sum of its parts). FLOPS: expected multiply-adds per "
        "query-document pair, sum_j p_q(j) p_d(j). Latency: one query at a time, encode + search.",
    ]
    return "\n".join(lines) + "\n"


def chart_points(results) -> list[dict[str, Any]]:
    first = results.measures[0]
    points = []
    for name, r in results.average.items():
        points.append(
            {
                "name": name,
                "kind": r.kind,
                "quality": r.metrics.get(first),
                "doc_dims": (r.sparsity or {}).get("doc_dims_avg"),
                "latency_ms": (r.latency_ms or {}).get("p50"),
            }
        )
    return points


def write_reports(results, output_dir: str | Path, *, chart: bool = True) -> dict[str, str]:
    """Write ``results.json``, ``results.md`` and (with ``chart``) ``quality_vs_dims.png``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    json_path = out / "results.json"
    json_path.write_text(json.dumps(results.to_json(), indent=2) + "\n")
    paths["json"] = str(json_path)
    md_path = out / "results.md"
    md_path.write_text(results_markdown(results))
    paths["markdown"] = str(md_path)
    if chart:
        from spladeray.eval.chart import quality_chart

        png = quality_chart(
            chart_points(results),
            out / "quality_vs_dims.png",
            metric=display_name(results.measures[0]),
            title=results.title,
        )
        paths["chart"] = str(png)
    return paths


# ----------------------------------------------------------------------------- bench report
RESULT_PREFIX = "RESULT "
RESULT_KEYS = ("name", "ratio", "baseline", "candidate")


def parse_result_lines(text: str) -> list[dict[str, Any]]:
    """Every ``RESULT {json}`` line of a bench script's output (contract: bench/run_all.py).

    A line that is not JSON, or lacks one of :data:`RESULT_KEYS`, comes back with an ``error``.
    """
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith(RESULT_PREFIX):
            continue
        try:
            obj = json.loads(line[len(RESULT_PREFIX) :])
        except json.JSONDecodeError as exc:
            out.append({"error": f"unparsable RESULT line: {exc.msg}", "raw": line[:200]})
            continue
        if not isinstance(obj, dict):
            out.append({"error": "RESULT is not a JSON object", "raw": line[:200]})
            continue
        missing = [k for k in RESULT_KEYS if k not in obj]
        if missing:
            obj["error"] = f"RESULT line misses {missing}"
        out.append(obj)
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _side(value: Any, label: str | None) -> str:
    return f"{label}: {_fmt(value)}" if label else _fmt(value)


def bench_markdown(scripts: Sequence[dict[str, Any]], *, title: str | None = None) -> str:
    """One table of every ratio the bench scripts reported, and a line per failed script."""
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines += [
        "| benchmark | metric | baseline | candidate | ratio | script |",
        "|---|---|---|---|---:|---|",
    ]
    problems = []
    for script in scripts:
        for r in script.get("results", []):
            if "error" in r:
                problems.append(f"- `{script['script']}`: {r['error']}")
                continue
            ratio = r.get("ratio")
            ratio_txt = f"{ratio:.2f}x" if isinstance(ratio, int | float) else str(ratio)
            lines.append(
                f"| {r['name']} | {r.get('metric', '')} "
                f"| {_side(r['baseline'], r.get('baseline_name'))} "
                f"| {_side(r['candidate'], r.get('candidate_name'))} "
                f"| {ratio_txt} | `{script['script']}` |"
            )
        if str(script.get("status", "")).startswith("skipped"):
            problems.append(f"- `{script['script']}`: {script['status']}")
        elif script.get("status") != "ok":
            problems.append(
                f"- `{script['script']}`: {script.get('status')} "
                f"(exit {script.get('returncode')}, {script.get('seconds', 0):.0f}s)"
            )
    lines += [
        "",
        "ratio: how many times better the candidate is than the baseline measured in the same "
        "run on the same machine (> 1: the candidate wins).",
    ]
    if problems:
        lines += ["", "Not measured:", ""] + problems
    return "\n".join(lines) + "\n"


def update_readme_section(
    readme: str | Path, body: str, *, start: str = README_START, end: str = README_END
) -> bool:
    """Replace the text between the ``start`` and ``end`` markers; False if they are missing."""
    path = Path(readme)
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        return False
    replacement = f"{start}\n{body.rstrip()}\n{end}"
    path.write_text(pattern.sub(lambda _: replacement, text, count=1), encoding="utf-8")
    return True
