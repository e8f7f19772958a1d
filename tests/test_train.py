"""Ray Train integration: 2-worker CPU DDP, export, resume, fault tolerance (local cluster)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_train_data import write_prepared

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, splade_tiny) -> Path:
    from helpers import build_tiny_mlm, tiny_tokenizer

    return build_tiny_mlm("bert", tiny_tokenizer(splade_tiny), tmp_path_factory.mktemp("mlm"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("prepared"), n_rows=32, n_neg=2)


def make_cfg(tmp: Path, model: Path, data: Path, **train):
    from spladeray.config import parse_config

    base = {
        "output_dir": str(tmp / "out"),
        "data_dir": str(data),
        "name": "t",
        "num_workers": 2,
        "batch_size": 4,
        "num_negatives": 2,
        "max_steps": 4,
        "lr": 1e-3,
        "shuffle_buffer": 8,
        "max_query_length": 16,
        "max_document_length": 24,
        "log_every_steps": 1,
        "checkpoint": {"every_steps": 2, "num_to_keep": 3},
        "losses": [
            {"name": "infonce"},
            {"name": "margin_mse", "weight": 0.1, "teacher": "ensemble"},
            {"name": "kl", "weight": 0.5, "teacher": "dense"},
        ],
        "regularizer": {"query_lambda": 1e-3, "document_lambda": 1e-3, "warmup_steps": 2},
    }
    base.update(train)
    return parse_config({"run_name": "t", "model": {"path": str(model)}, "train": base})


def _checkpoints(cfg) -> list[Path]:
    return sorted(
        p for p in (cfg.train.output_dir / "ray" / "t").glob("checkpoint_*") if p.is_dir()
    )


def test_resume_same_name_continues_at_checkpoint_step(
    ray_cluster, tmp_path, tiny_model, prepared, scifact
):
    """A run dies after its step-2 checkpoint; re-running the same name restores step 2 with the
    checkpoint's parameters and ends at max_steps, with every step applied exactly once. The BM25
    baseline measured at step 0 of the first attempt is still in the resumed run's final report."""
    from spladeray.train import run_training
    from spladeray.train.loop import BASELINES_FILE

    dump = tmp_path / "dump"
    evaluation = {"beir_dir": str(scifact), "split": "dev", "corpus_limit": 40, "bm25": True}

    def cfg(**debug):
        return make_cfg(
            tmp_path, tiny_model, prepared, num_workers=1, max_steps=4, eval=evaluation, debug=debug
        )

    crash = cfg(fail_at_step=3, marker_dir=str(tmp_path / "markers"))
    with pytest.raises(Exception, match="injected failure"):
        run_training(crash)
    assert [p.name for p in _checkpoints(crash)] == ["checkpoint_0000002"]

    baselines = json.loads((crash.train.output_dir / "t" / BASELINES_FILE).read_text())
    assert 0.0 <= baselines["bm25/nDCG@10"] <= 1.0

    again = cfg(dump_dir=str(dump))
    result = run_training(again)
    assert result.metrics["bm25/nDCG@10"] == baselines["bm25/nDCG@10"]
    assert "eval/nDCG@10" in result.metrics
    restored = torch.load(dump / "resume_step2_rank0.pt", weights_only=False)
    saved = torch.load(_checkpoints(again)[0] / "train_state.pt", weights_only=False)
    assert restored["step"] == 2 and saved["state"]["step"] == 2
    assert restored["model"].keys() == saved["model"].keys()
    for key, value in saved["model"].items():
        assert torch.equal(restored["model"][key], value), key
    assert result.metrics["step"] == 4
    final = torch.load(_checkpoints(again)[-1] / "train_state.pt", weights_only=False)
    assert final["state"]["step"] == 4
    assert all(int(s["step"]) == 4 for s in final["optimizer"]["state"].values())


def test_two_worker_ddp_survives_a_worker_failure_and_exports(
    ray_cluster, tmp_path, tiny_model, prepared
):
    """2 CPU workers (gloo DDP). Rank 1 raises once after step 3; with max_failures=1 the worker
    group restarts from the step-2 checkpoint and the run completes at step 4 (step 3 is redone,
    not double-counted). Metrics are reported, checkpoints written, the exported model loads."""
    from sentence_transformers import SparseEncoder

    from spladeray.model import SpladeEncoder
    from spladeray.train import run_training

    markers, dump = tmp_path / "markers", tmp_path / "dump"
    cfg = make_cfg(
        tmp_path,
        tiny_model,
        prepared,
        max_steps=4,
        max_failures=1,
        debug={
            "fail_at_step": 3,
            "fail_rank": 1,
            "marker_dir": str(markers),
            "dump_dir": str(dump),
        },
    )
    result = run_training(cfg)
    assert len(list(markers.glob("failure_*"))) == 1
    assert sorted(p.name for p in dump.iterdir()) == [
        "resume_step2_rank0.pt",
        "resume_step2_rank1.pt",
    ]
    m = result.metrics
    assert m["step"] == 4 and m["world_size"] == 2
    for key in (
        "loss",
        "loss/infonce",
        "loss/margin_mse",
        "loss/kl",
        "flops/query",
        "flops/document",
        "lambda/document",
        "lr",
        "active_dims/query",
        "active_dims/document",
        "tokens_per_s",
        "samples_per_s",
    ):
        assert key in m and m[key] == m[key], key
    assert m["lambda/document"] == pytest.approx(1e-3)
    assert [p.name for p in _checkpoints(cfg)] == ["checkpoint_0000002", "checkpoint_0000004"]
    final = _checkpoints(cfg)[-1]
    assert {"train_state.pt", "rng_rank0.pt", "rng_rank1.pt", "model"} <= {
        p.name for p in final.iterdir()
    }
    state = torch.load(final / "train_state.pt", weights_only=False)
    assert state["state"]["step"] == 4 and state["world_size"] == 2
    # the optimizer applied exactly max_steps updates to the final model
    assert all(int(s["step"]) == 4 for s in state["optimizer"]["state"].values())
    assert any((cfg.train.output_dir / "t" / "tensorboard").iterdir())

    enc = SpladeEncoder.from_pretrained(str(result.model_dir))
    vec = enc.encode_documents(["cell protein gene"])[0]
    assert vec and all(v > 0 for v in vec.values())
    st = SparseEncoder(str(result.model_dir), device="cpu")
    emb = st.encode_document(["cell protein gene"], convert_to_tensor=True)
    assert emb.shape[-1] == enc.vocab_size


def test_resume_without_baselines_file_warns(tmp_path, caplog):
    """A resumed run that cannot find baselines.json says so (its table will lack those rows)."""
    from spladeray.train.loop import load_baselines

    path = tmp_path / "baselines.json"
    with caplog.at_level("WARNING", logger="spladeray.train.loop"):
        assert load_baselines(path, 7) == {}
    assert "resumed at step 7" in caplog.text and str(path) in caplog.text

    path.write_text(json.dumps({"bm25/nDCG@10": 0.5}))
    caplog.clear()
    assert load_baselines(path, 7) == {"bm25/nDCG@10": 0.5}
    assert caplog.text == ""
