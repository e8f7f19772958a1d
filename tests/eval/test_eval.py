"""Evaluation units: metrics against ir-measures, fusion and sparsity by hand, reports, bench."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import ir_measures
import numpy as np
import pytest
import scipy.sparse as sp

from spladeray.eval.metrics import (
    DEFAULT_MEASURES,
    evaluate_run,
    per_query,
    read_trec_run,
    write_trec_run,
)
from spladeray.eval.report import bench_markdown, parse_result_lines, update_readme_section
from spladeray.eval.sparsity import active_dims, expected_flops, sparsity_stats
from spladeray.retrieval.fusion import fuse, minmax, rrf, score_fusion

from helpers import ROOT

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- metrics
def _random_run_and_qrels(seed: int = 0):
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(300)]
    qrels, run = {}, {}
    for q in range(40):
        qid = f"q{q}"
        qrels[qid] = {d: rng.choice([1, 1, 2]) for d in rng.sample(docs, rng.randint(1, 4))}
        if q % 10 == 9:
            qrels[qid][rng.choice(docs)] = 0  # a judged non-relevant document
        run[qid] = {d: rng.random() for d in rng.sample(docs, 120)}
        for d in qrels[qid]:  # some relevant documents near the top
            if rng.random() < 0.5:
                run[qid][d] = 1.0 + rng.random()
    return run, qrels


def _write_qrels(qrels, path: Path) -> Path:
    path.write_text(
        "".join(f"{q} 0 {d} {r}\n" for q, docs in qrels.items() for d, r in docs.items())
    )
    return path


def test_metrics_equal_ir_measures_on_the_same_run_file(tmp_path):
    run, qrels = _random_run_and_qrels()
    run_file = write_trec_run(run, tmp_path / "run.trec")
    qrels_file = _write_qrels(qrels, tmp_path / "qrels.txt")
    measures = [ir_measures.parse_measure(m) for m in DEFAULT_MEASURES]
    direct = ir_measures.calc_aggregate(
        measures,
        list(ir_measures.read_trec_qrels(str(qrels_file))),
        list(ir_measures.read_trec_run(str(run_file))),
    )
    ours = evaluate_run(read_trec_run(run_file), qrels, DEFAULT_MEASURES)
    assert set(ours) == set(DEFAULT_MEASURES)
    for name, m in zip(DEFAULT_MEASURES, measures, strict=True):
        assert ours[name] == pytest.approx(direct[m], abs=1e-9), name
    # per-query values average to the aggregate
    pq = per_query(run, qrels, DEFAULT_MEASURES)
    assert len(pq) == len(qrels)
    assert np.mean([v["nDCG@10"] for v in pq.values()]) == pytest.approx(ours["nDCG@10"])


def test_queries_missing_from_the_run_count_as_zero():
    run, qrels = _random_run_and_qrels(1)
    full = evaluate_run(run, qrels, ["nDCG@10"])["nDCG@10"]
    dropped = {q: d for q, d in run.items() if q not in ("q0", "q1")}
    kept = per_query(run, qrels, ["nDCG@10"])
    expected = sum(v["nDCG@10"] for q, v in kept.items() if q not in ("q0", "q1")) / len(qrels)
    assert evaluate_run(dropped, qrels, ["nDCG@10"])["nDCG@10"] == pytest.approx(expected)
    assert expected <= full


def test_trec_run_round_trip(tmp_path):
    run = {"q1": {"a": 2.5, "b": 1.0}, "q2": {"c": 0.25}}
    assert read_trec_run(write_trec_run(run, tmp_path / "r.trec")) == run
    lines = (tmp_path / "r.trec").read_text().splitlines()
    assert lines[0].split() == ["q1", "Q0", "a", "1", "2.500000", "spladeray"]


# ----------------------------------------------------------------------------- fusion
RUN_A = {"q": {"d1": 3.0, "d2": 2.0, "d3": 1.0}}
RUN_B = {"q": {"d3": 0.9, "d1": 0.5, "d4": 0.1}}


def test_rrf_hand_checked():
    fused = fuse([RUN_A, RUN_B], "rrf", k=60)["q"]
    assert fused["d1"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["d3"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["d2"] == pytest.approx(1 / 62)
    assert fused["d4"] == pytest.approx(1 / 63)
    assert list(fused) == ["d1", "d3", "d2", "d4"]
    assert list(fuse([RUN_A, RUN_B], "rrf", k=60, depth=2)["q"]) == ["d1", "d3"]
    # a weight on the second run moves d3 (its first hit) to the top
    assert list(fuse([RUN_A, RUN_B], "rrf", k=60, weights=[1.0, 2.0])["q"])[0] == "d3"
    # one query's rankings: score mappings or ranked id lists give the same fusion
    assert rrf([RUN_A["q"], RUN_B["q"]], k=60) == fused
    assert rrf([["d1", "d2", "d3"], ["d3", "d1", "d4"]], k=60) == fused
    assert list(rrf([["d1", "d2", "d3"], RUN_B["q"]], k=60, depth=2)) == ["d1", "d3"]


def test_score_fusion_hand_checked():
    assert minmax({"a": 3.0, "b": 2.0, "c": 1.0}) == {"a": 1.0, "b": 0.5, "c": 0.0}
    assert minmax({"a": 7.0}) == {"a": 1.0}
    fused = fuse([RUN_A, RUN_B], "score")["q"]  # equal weights 0.5 / 0.5
    assert fused == pytest.approx({"d1": 0.75, "d3": 0.5, "d2": 0.25, "d4": 0.0})
    assert list(fused) == ["d1", "d3", "d2", "d4"]
    assert score_fusion([RUN_A["q"], RUN_B["q"]]) == fused
    weighted = fuse([RUN_A, RUN_B], "score", weights=[0.2, 0.8])["q"]
    assert weighted == pytest.approx({"d3": 0.8, "d1": 0.6, "d2": 0.1, "d4": 0.0})
    assert list(weighted)[0] == "d3"


def test_minmax_of_equal_scores_is_one():
    """The documented choice: all-equal scores (a tie, or a single hit) scale to 1, not 0."""
    assert minmax({"a": 2.0, "b": 2.0}) == {"a": 1.0, "b": 1.0}
    np.testing.assert_array_equal(minmax([4.0, 4.0]), [1.0, 1.0])
    np.testing.assert_array_equal(minmax(np.array([3.0, 1.0, 2.0])), [1.0, 0.0, 0.5])
    assert minmax({}) == {} and minmax([]).size == 0
    # in score fusion a run whose hits tie still counts them fully
    assert score_fusion([{"x": 5.0, "y": 5.0}, {"x": 1.0, "z": 0.0}]) == pytest.approx(
        {"x": 1.0, "y": 0.5, "z": 0.0}
    )


def test_fusion_keeps_queries_of_either_run_and_rejects_bad_input():
    fused = fuse([RUN_A, {"other": {"x": 1.0}}], "rrf")
    assert set(fused) == {"q", "other"}
    assert fused["other"] == {"x": pytest.approx(1 / 61)}
    with pytest.raises(ValueError):
        fuse([RUN_A, RUN_B], "max")
    with pytest.raises(ValueError):
        fuse([RUN_A, RUN_B], weights=[1.0])
    with pytest.raises(ValueError):
        rrf([RUN_A["q"], RUN_B["q"]], weights=[1.0])


# ----------------------------------------------------------------------------- sparsity
def test_sparsity_hand_checked():
    q = sp.csr_matrix(np.array([[1, 0, 2], [0, 0, 3]], dtype=np.float32))
    d = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0]], dtype=np.float32)
    assert active_dims(q).tolist() == [2, 1]
    # p_q = [.5, 0, 1], p_d = [.5, .25, .25] -> .25 + 0 + .25
    assert expected_flops(q, d) == pytest.approx(0.5)
    stats = sparsity_stats(q, d)
    assert stats["query_dims_avg"] == pytest.approx(1.5)
    assert stats["query_dims_p95"] == pytest.approx(1.95)
    assert stats["doc_dims_avg"] == pytest.approx(1.0)
    # a dense model of dimension n costs n
    dense = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    assert expected_flops(dense, dense) == pytest.approx(8.0)


# ----------------------------------------------------------------------------- config
def test_configs_have_valid_evaluate_sections():
    from spladeray.config import load_config

    cfg = load_config(ROOT / "configs" / "evaluate_scifact.yaml")
    kinds = [s.kind for s in cfg.evaluate.systems]
    assert {"bm25", "sparse", "dense", "hybrid"} <= set(kinds)
    assert cfg.evaluate.datasets[0].split == "dev"
    demo = load_config(ROOT / "configs" / "demo.yaml")
    if demo.evaluate is not None:
        assert demo.evaluate.systems


def test_the_recipe_test_config_reads_dev_once_at_512_tokens(monkeypatch):
    from spladeray.config import load_config

    monkeypatch.setenv("SPLADERAY_RUNS", "/runs")
    cfg = load_config(ROOT / "configs" / "evaluate_scifact_recipe.yaml")
    assert [d.split for d in cfg.evaluate.datasets] == ["dev"]
    chosen = "/runs/scifact_finetune/train/ray/scifact-sweep-qlambda0.3/checkpoint_0000400/model"
    assert cfg.model.path == chosen and cfg.model.max_document_length == 512
    sparse = [s for s in cfg.evaluate.systems if s.kind == "sparse"]
    assert [s.model.max_document_length for s in sparse if s.model is not None] == [512]


def test_hybrid_must_fuse_earlier_systems():
    from spladeray.config import ConfigError, parse_config

    base = {"model": {"path": "/x"}, "evaluate": {"systems": [{"kind": "bm25"}]}}
    base["evaluate"]["systems"].append({"kind": "hybrid", "name": "h", "fuse": ["bm25", "nope"]})
    with pytest.raises(ConfigError, match="nope"):
        parse_config(base)
    base["evaluate"]["systems"] = [{"kind": "bm25"}, {"kind": "bm25"}]
    with pytest.raises(ConfigError, match="unique"):
        parse_config(base)


# ----------------------------------------------------------------------------- chart, bench
def test_chart_is_a_valid_png(tmp_path):
    import matplotlib.pyplot as plt

    from spladeray.eval.chart import quality_chart

    points = [
        {"name": "bm25", "kind": "bm25", "quality": 0.68, "doc_dims": 95, "latency_ms": 0.5},
        {"name": "splade", "kind": "sparse", "quality": 0.64, "doc_dims": 250, "latency_ms": 20},
        {"name": "dense", "kind": "dense", "quality": 0.64, "doc_dims": 384, "latency_ms": 15},
        {"name": "hybrid", "kind": "hybrid", "quality": 0.70, "doc_dims": 345, "latency_ms": 21},
    ]
    path = quality_chart(points, tmp_path / "c.png", title="test")
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 20_000  # two panels with points, labels and a legend, not a blank canvas
    image = plt.imread(path)
    assert image.shape[0] > 400 and image.shape[1] > 1000
    assert image[..., :3].std() > 0.05  # not a single colour


def test_bench_result_lines_and_markdown():
    out = "\n".join(
        [
            "some log line",
            'RESULT {"name": "encode", "metric": "docs/s", "baseline": 30.0, "candidate": 45.0,'
            ' "ratio": 1.5, "baseline_name": "st", "candidate_name": "ours"}',
            'RESULT {"name": "broken"}',
            "RESULT not json",
        ]
    )
    results = parse_result_lines(out)
    assert len(results) == 3
    assert results[0]["ratio"] == 1.5 and "error" not in results[0]
    assert "error" in results[1] and "error" in results[2]
    md = bench_markdown([{"script": "bench/encode.py", "status": "ok", "results": results[:1]}])
    assert "| encode | docs/s | st: 30 | ours: 45 | 1.50x |" in md


def test_update_readme_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\n\n## Performance\n<!-- bench:start -->\nold\n<!-- bench:end -->\ntail\n"
    )
    assert update_readme_section(readme, "| new | table |\n")
    text = readme.read_text()
    assert "old" not in text and "| new | table |" in text and text.endswith("tail\n")
    assert update_readme_section(readme, "again")  # idempotent markers
    assert readme.read_text().count("<!-- bench:start -->") == 1
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert not update_readme_section(plain, "x")
    assert plain.read_text() == "no markers\n"


def test_run_all_runs_each_script_and_writes_one_report(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "good.py").write_text(
        "import json\nprint('working')\n"
        'print("RESULT " + json.dumps({"name": "good", "ratio": 2.0, "baseline": 1, '
        '"candidate": 2, "metric": "ops/s"}))\n'
    )
    (bench / "crash.py").write_text("raise SystemExit(3)\n")
    (bench / "slow.py").write_text("import time\ntime.sleep(60)\n")
    (bench / "gpu.py").write_text("print('SKIP no GPU')\n")
    (bench / "_helper.py").write_text("raise SystemExit('helpers are not benchmarks')\n")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- bench:start -->\n<!-- bench:end -->\n")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run_all.py"),
            "--bench-dir",
            str(bench),
            "--out-dir",
            str(tmp_path / "out"),
            "--log-dir",
            str(tmp_path / "logs"),
            "--readme",
            str(readme),
            "--timeout",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr  # two scripts were not measured
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    status = {Path(s["script"]).stem: s["status"] for s in report["scripts"]}
    assert status == {
        "crash": "failed",
        "good": "ok",
        "slow": "timed out",
        "gpu": "skipped: no GPU",
    }
    md = (tmp_path / "out" / "REPORT.md").read_text()
    assert "| good | ops/s | 1 | 2 | 2.00x |" in md
    assert "timed out" in md and "failed" in md and "skipped: no GPU" in md
    assert "| good |" in readme.read_text()
    assert (tmp_path / "logs" / "good.log").read_text().startswith("working")
