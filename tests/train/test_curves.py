"""Training curves and the sweep picture (spladeray.train.curves): the history a run keeps, the
PNGs drawn from it, and the history a resumed run continues."""

from __future__ import annotations

import json

from spladeray.train.curves import CurveLog, draw_run_curves, plot_sweep, sweep_points


def _row(step: int, ndcg: float | None = None) -> dict:
    row = {
        "step": step,
        "loss": 2.0 / (1 + step),
        "loss/infonce": 1.5 / (1 + step),
        "lr": 1e-5 * step,
        "lambda/query": 1e-4 * step,
        "active_dims/query": 40.0 - step,
        "active_dims/document": 250.0 - step,
        "samples_per_s": 10.0,
        "note": "not a number",
    }
    if ndcg is not None:
        row.update({"eval/nDCG@10": ndcg, "eval/doc_active_dims": 250.0 - step / 2})
    return row


def test_run_history_and_curves_png(tmp_path):
    run = str(tmp_path / "run")
    log = CurveLog(run, step=0)
    log.add({"step": 0, "eval_start/nDCG@10": 0.6, "eval_start/doc_active_dims": 250.0})
    for step in (2, 4, 6):
        log.add(_row(step, {4: 0.64, 6: 0.66}.get(step)))
    log.save()
    draw_run_curves(run)
    png = (tmp_path / "run" / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4, 6]
    assert "note" not in rows[1]  # only numbers are kept
    assert sweep_points(run) == [(0, 250.0, 0.6), (4, 248.0, 0.64), (6, 247.0, 0.66)]

    resumed = CurveLog(run, step=4)  # a resume at step 4 drops what came after it
    assert [r["step"] for r in resumed.rows] == [0, 2, 4]
    resumed.add(_row(4, 0.65))  # the same step again replaces its row
    assert [r["step"] for r in resumed.rows] == [0, 2, 4]
    assert resumed.rows[-1]["eval/nDCG@10"] == 0.65


def test_sweep_png(tmp_path):
    points = {
        "t5": [(0, 250.0, 0.6), (100, 180.0, 0.7), (200, 156.0, 0.77)],
        "t1": [(0, 250.0, 0.6), (100, 200.0, 0.68), (200, 190.0, 0.72)],
        "empty": [],
    }
    path = plot_sweep(points, "t5", tmp_path / "sweep.png")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_sweep_report_marks_the_chosen_variant(tmp_path):
    """write_sweep_report: sweep.md names the best validation variant, has the table and the
    picture; sweep.png is drawn from each variant's metrics.jsonl."""
    from spladeray.train.sweep import SweepRow, write_sweep_report

    runs = {}
    for name, final in (("t1", 0.70), ("t5", 0.77)):
        log = CurveLog(str(tmp_path / name), step=0)
        log.add({"step": 0, "eval_start/nDCG@10": 0.6, "eval_start/doc_active_dims": 250.0})
        log.add(_row(100, final - 0.05))
        log.add(_row(200, final))
        log.save()
        runs[name] = str(tmp_path / name)
    rows = [
        SweepRow(name, [f"x={name}"], {"nDCG@10": v, "doc_active_dims": 150.0}, 200, 1.0, 9.0)
        for name, v in (("t1", 0.70), ("t5", 0.77))
    ]
    write_sweep_report(str(tmp_path / "sweep"), "demo-sweep", rows, runs)
    md = (tmp_path / "sweep" / "sweep.md").read_text()
    assert "chosen on validation: **t5** (nDCG@10 0.7700 at 150 doc dims)" in md
    assert md.index("| t5 |") < md.index("| t1 |")
    assert "![validation nDCG@10 against document dims](sweep.png)" in md
    assert (tmp_path / "sweep" / "sweep.png").read_bytes().startswith(b"\x89PNG")
