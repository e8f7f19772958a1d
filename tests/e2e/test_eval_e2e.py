"""Evaluation end to end on a small BEIR directory: every system kind, reports, Ray Data path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spladeray.config import (
    EvalBM25Config,
    EvalDatasetConfig,
    EvalDenseConfig,
    EvalHybridConfig,
    EvalSparseConfig,
    EvaluateConfig,
    ModelConfig,
    parse_config,
)

from helpers import build_tiny_mlm, tiny_tokenizer, write_beir

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

TOPICS = {
    "vaccine": [
        "Measles vaccine efficacy in children after two doses",
        "Vaccination campaigns reduce measles outbreaks in schools",
        "Immune response to the measles mumps rubella vaccine",
    ],
    "diabetes": [
        "Insulin resistance and type 2 diabetes in obese adults",
        "Metformin lowers blood glucose in diabetic patients",
        "Diet and exercise prevent diabetes onset",
    ],
    "cancer": [
        "Tumor suppressor gene p53 mutations in lung cancer",
        "Chemotherapy outcomes for breast cancer patients",
        "Smoking increases the risk of lung carcinoma",
    ],
    "sleep": [
        "Sleep deprivation impairs memory consolidation",
        "Circadian rhythm disruption in night shift workers",
        "Melatonin improves sleep quality in the elderly",
    ],
    "heart": [
        "Statins reduce cholesterol and cardiovascular events",
        "Hypertension is a major risk factor for heart attack",
        "Aspirin for primary prevention of heart disease",
    ],
}
QUERIES = {
    "vaccine": "does the measles vaccine work",
    "diabetes": "metformin treatment for diabetes",
    "cancer": "lung cancer risk from smoking",
    "sleep": "effects of poor sleep on memory",
    "heart": "statins and heart disease prevention",
}


@pytest.fixture(scope="module")
def small_beir(tmp_path_factory) -> Path:
    corpus, qrels = [], []
    for topic, texts in TOPICS.items():
        for i, text in enumerate(texts):
            did = f"{topic}-{i}"
            corpus.append({"_id": did, "title": topic.title(), "text": text})
            qrels.append((f"q-{topic}", did, 2 if i == 0 else 1))
    corpus.append({"_id": "noise", "title": "", "text": "Weather report for the weekend"})
    queries = [{"_id": f"q-{t}", "text": q} for t, q in QUERIES.items()]
    queries.append({"_id": "unjudged", "text": "not in the qrels"})
    return write_beir(tmp_path_factory.mktemp("beir") / "small", corpus, queries, {"dev": qrels})


def test_evaluate_job_end_to_end(small_beir, splade_tiny, tmp_path):
    from spladeray.eval import run_evaluation

    out = tmp_path / "eval"
    cfg = parse_config(
        {
            "run_name": "e2e",
            "model": {"path": str(splade_tiny), "device": "cpu"},
            "evaluate": {
                "output_dir": str(out),
                "datasets": [
                    {"name": "small", "beir_dir": str(small_beir), "split": "dev"},
                    {
                        "name": "small-cut",
                        "beir_dir": str(small_beir),
                        "split": "dev",
                        "corpus_limit": 9,
                    },
                ],
                "systems": [
                    {"kind": "bm25"},
                    {"kind": "sparse", "name": "splade-tiny"},
                    {"kind": "dense", "name": "minilm", "batch_size": 16},
                    {"kind": "hybrid", "name": "rrf", "fuse": ["bm25", "splade-tiny"]},
                    {
                        "kind": "hybrid",
                        "name": "score",
                        "fuse": ["splade-tiny", "minilm"],
                        "method": "score",
                        "weights": [0.3, 0.7],
                    },
                ],
                "latency_queries": 2,
            },
        }
    )
    results = run_evaluation(cfg, echo=False, show_progress=False)

    names = ["bm25", "splade-tiny", "minilm", "rrf", "score"]
    assert list(results.average) == names
    assert [d["name"] for d in results.datasets] == ["small", "small-cut"]
    assert results.datasets[0]["documents"] == 16 and results.datasets[0]["queries"] == 5
    # corpus_limit keeps only queries with a relevant document among the first 9 documents
    assert results.datasets[1]["documents"] == 9 and results.datasets[1]["queries"] == 3
    for name in names:
        small = results.per_dataset["small"][name]
        assert small.metrics["nDCG@10"] > 0.6, (name, small.metrics)
        assert small.latency_ms["n"] == 2 and small.latency_ms["p99"] >= small.latency_ms["p50"]
        avg = results.average[name]
        cut = results.per_dataset["small-cut"][name]
        assert avg.metrics["R@100"] == pytest.approx(
            (small.metrics["R@100"] + cut.metrics["R@100"]) / 2
        )
    dense = results.per_dataset["small"]["minilm"].sparsity
    assert dense["doc_dims_avg"] == 384 and dense["flops"] == pytest.approx(384)
    sparse = results.per_dataset["small"]["splade-tiny"].sparsity
    assert 0 < sparse["flops"] < sparse["query_dims_avg"] <= sparse["query_dims_p95"]
    bm25 = results.per_dataset["small"]["bm25"].sparsity
    assert results.per_dataset["small"]["rrf"].sparsity["doc_dims_avg"] == pytest.approx(
        bm25["doc_dims_avg"] + sparse["doc_dims_avg"]
    )

    # the report files exist and parse
    assert set(results.paths) == {"json", "markdown", "chart", "runs"}
    data = json.loads(Path(results.paths["json"]).read_text())
    assert data["measures"] == ["nDCG@10", "R@1", "R@10", "R@100", "RR@10"]
    assert set(data["average"]) == set(names) and set(data["per_dataset"]) == {"small", "small-cut"}
    assert data["average"]["bm25"]["metrics"]["nDCG@10"] == pytest.approx(
        results.average["bm25"].metrics["nDCG@10"]
    )
    md = Path(results.paths["markdown"]).read_text()
    header = [line for line in md.splitlines() if line.startswith("| system | kind |")][0]
    for col in ("nDCG@10", "Recall@1", "Recall@100", "MRR@10", "FLOPS", "latency p50 / p99 ms"):
        assert col in header
    for name in names:
        assert f"| {name} |" in md
    assert "per dataset" in md  # two datasets: the per-dataset table too
    png = Path(results.paths["chart"]).read_bytes()
    assert png[:8] == PNG_SIGNATURE and len(png) > 20_000
    run_file = out / "runs" / "small" / "splade-tiny.trec"
    from spladeray.eval.metrics import evaluate_run, read_trec_run

    # the saved run reproduces the reported metric
    qrels = {f"q-{t}": {f"{t}-{i}": 2 if i == 0 else 1 for i in range(3)} for t in TOPICS}
    assert evaluate_run(read_trec_run(run_file), qrels)["nDCG@10"] == pytest.approx(
        results.per_dataset["small"]["splade-tiny"].metrics["nDCG@10"]
    )


def test_a_loaded_encoder_through_the_pipeline(small_beir, splade_tiny, tmp_path):
    """A SpladeEncoder in memory (no config model) evaluated by the one pipeline."""
    from spladeray.eval import evaluate_systems
    from spladeray.eval.metrics import read_trec_run
    from spladeray.model import SpladeEncoder

    encoder = SpladeEncoder.from_pretrained(str(splade_tiny))
    system = EvalSparseConfig(name="enc")
    cut = EvalDatasetConfig(name="cut", beir_dir=small_beir, split="dev", corpus_limit=9)
    results = evaluate_systems([cut], [system], encoders={"enc": encoder}, latency_queries=0)
    assert set(results.average["enc"].metrics) == {"nDCG@10", "R@1", "R@10", "R@100", "RR@10"}
    full = EvalDatasetConfig(name="full", beir_dir=small_beir, split="dev")
    evaluate_systems(
        [full], [system], encoders={"enc": encoder}, depth=5, latency_queries=0, runs_dir=tmp_path
    )
    run = read_trec_run(tmp_path / "full" / "enc.trec")
    assert set(run) == {f"q-{t}" for t in TOPICS} and all(len(h) <= 5 for h in run.values())


def test_corpus_encoding_on_a_ray_data_actor_pool(ray_cluster, small_beir, splade_tiny, tmp_path):
    """The distributed path gives the same vectors and the same run as in-process."""
    from spladeray.eval.runner import Dataset, build_retriever

    model = build_tiny_mlm("bert", tiny_tokenizer(splade_tiny), tmp_path / "tiny-bert")
    model_cfg = ModelConfig(path=str(model), device="cpu", max_document_length=64)
    data = Dataset.load(EvalDatasetConfig(beir_dir=small_beir, split="dev"))
    system = EvalSparseConfig(name="tiny")
    spread = build_retriever(
        system,
        default_model=model_cfg,
        distributed=EvaluateConfig(distributed=True, num_actors=2, actor_batch_size=4),
    )
    inproc = build_retriever(system, default_model=model_cfg)
    assert spread.encode_fn is not None and inproc.encode_fn is None
    try:
        for retriever in (spread, inproc):
            retriever.index(data.doc_ids, data.doc_texts)
        assert spread.doc_matrix.shape == inproc.doc_matrix.shape
        assert np.allclose(spread.doc_matrix.toarray(), inproc.doc_matrix.toarray(), atol=1e-5)
        queries = list(data.queries.values())
        for a, b in zip(spread.search(queries, 5), inproc.search(queries, 5), strict=True):
            assert list(a) == list(b) and list(a.values()) == pytest.approx(list(b.values()))
    finally:
        spread.close()
        inproc.close()


def test_systems_can_be_given_in_code(small_beir, splade_tiny, tmp_path):
    """What the demo does: its own systems (a loaded encoder by name), its own output folder."""
    from spladeray.eval import run_evaluation
    from spladeray.model import SpladeEncoder

    cfg = parse_config(
        {"model": {"path": str(splade_tiny)}, "data": {"beir_dir": str(small_beir), "split": "dev"}}
    )
    encoder = SpladeEncoder.from_pretrained(str(splade_tiny))
    results = run_evaluation(
        cfg,
        systems=[
            EvalBM25Config(),
            EvalSparseConfig(name="after"),
            EvalHybridConfig(name="mix", fuse=["bm25", "after"]),
        ],
        encoders={"after": encoder},
        output_dir=tmp_path / "demo-eval",
        echo=False,
    )
    assert list(results.average) == ["bm25", "after", "mix"]
    assert Path(results.paths["chart"]).is_file()
    assert EvalDenseConfig().model is None  # the default: the bundled MiniLM
