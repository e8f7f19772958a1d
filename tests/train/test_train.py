"""Ray Train integration: 2-worker CPU DDP, export, resume, fault tolerance (local cluster)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import ROOT

pytestmark = pytest.mark.timeout(600)


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


def assert_collectives_on_worker_device(log_dir: Path, ranks: set[int]) -> None:
    """Every torch.distributed collective of the run got tensors on the worker's training device
    (``ray.train.torch.get_device()``), and the metrics all-reduce and the InfoNCE all-gather
    did run on every rank."""
    from spladeray.train.debug import read_collective_log

    records = read_collective_log(log_dir)
    assert records, "no collective was recorded"
    wrong = [r for r in records if r["devices"] != [r["expected"]]]
    assert not wrong, wrong[:5]
    for rank in ranks:
        ops = {r["op"] for r in records if r["rank"] == rank}
        assert {"all_reduce", "all_gather"} <= ops, (rank, ops)


def _checkpoints(cfg) -> list[Path]:
    return sorted(
        p for p in (Path(cfg.train.output_dir) / "ray" / "t").glob("checkpoint_*") if p.is_dir()
    )


def test_resume_same_name_continues_at_checkpoint_step(
    ray_cluster, tmp_path, tiny_model, prepared, scifact
):
    """A run dies after its step-2 checkpoint; re-running the same name restores step 2 with the
    checkpoint's parameters and ends at max_steps, with every step applied exactly once. The BM25
    baseline measured at step 0 of the first attempt is still in the resumed run's final report."""
    from spladeray.model import SpladeEncoder
    from spladeray.train import run_train
    from spladeray.train.reporter import baselines_uri

    dump = tmp_path / "dump"
    evaluation = {"beir_dir": str(scifact), "split": "dev", "corpus_limit": 40, "bm25": True}

    def cfg(**debug):
        return make_cfg(
            tmp_path, tiny_model, prepared, num_workers=1, max_steps=4, eval=evaluation, debug=debug
        )

    crash = cfg(fail_at_step=3, marker_dir=str(tmp_path / "markers"))
    with pytest.raises(Exception, match="injected failure"):
        run_train(crash)
    assert [p.name for p in _checkpoints(crash)] == ["checkpoint_0000002"]

    baselines = json.loads(Path(baselines_uri(crash.train, "t")).read_text())
    assert 0.0 <= baselines["bm25/nDCG@10"] <= 1.0

    again = cfg(dump_dir=str(dump))
    result = run_train(again)
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
    # every checkpoint is a usable model (train.checkpoint.save_model): step 2's model/ holds
    # step 2's encoder weights, not the final ones
    step2 = SpladeEncoder.from_pretrained(str(_checkpoints(again)[0] / "model"))
    for name, value in step2.state_dict().items():
        matches = [k for k in saved["model"] if k.endswith("." + name)]
        assert len(matches) == 1, name
        assert torch.equal(value, saved["model"][matches[0]].to(value.dtype)), name
    assert any(
        not torch.equal(saved["model"][k], final["model"][k]) for k in saved["model"]
    )  # the run went on training after step 2
    assert all(int(s["step"]) == 4 for s in final["optimizer"]["state"].values())
    # the run's curves (metrics.jsonl, issue 33) continue the first attempt's: step 0's
    # baselines, each step once, up to the end
    history = Path(again.train.output_dir) / "t" / "metrics.jsonl"
    steps = [json.loads(line)["step"] for line in history.read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 4 and 2 in steps


def test_two_worker_ddp_survives_a_worker_failure_and_exports(
    ray_cluster, tmp_path, tiny_model, prepared
):
    """2 CPU workers (gloo DDP). Rank 1 raises once after step 3; with max_failures=1 the worker
    group restarts from the step-2 checkpoint and the run completes at step 4 (step 3 is redone,
    not double-counted). Metrics are reported, checkpoints written, the exported model loads."""
    from sentence_transformers import SparseEncoder

    from spladeray.model import SpladeEncoder
    from spladeray.train import run_train

    markers, dump, collectives = tmp_path / "markers", tmp_path / "dump", tmp_path / "collectives"
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
            "collective_log_dir": str(collectives),
        },
    )
    result = run_train(cfg)
    assert_collectives_on_worker_device(collectives, ranks={0, 1})
    assert len(list(markers.glob("failure_*"))) == 1
    assert sorted(p.name for p in dump.iterdir()) == [
        "resume_step2_rank0.pt",
        "resume_step2_rank1.pt",
    ]
    m = result.metrics
    assert m["step"] == 4 and m["world_size"] == 2 and m["resumes"] == 1
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
    assert any((Path(cfg.train.output_dir) / "t" / "tensorboard").iterdir())

    enc = SpladeEncoder.from_pretrained(str(result.model_dir))
    vec = enc.encode_documents(["cell protein gene"])[0]
    assert vec and all(v > 0 for v in vec.values())
    st = SparseEncoder(str(result.model_dir), device="cpu")
    emb = st.encode_document(["cell protein gene"], convert_to_tensor=True)
    assert emb.shape[-1] == enc.vocab_size


def test_resume_without_baselines_file_warns(tmp_path, caplog):
    """A resumed run that cannot find baselines.json says so (its table will lack those rows)."""
    from spladeray.train.reporter import load_baselines

    path = tmp_path / "baselines.json"
    with caplog.at_level("WARNING", logger="spladeray.train.reporter"):
        assert load_baselines(path, 7) == {}
    assert "resumed at step 7" in caplog.text and str(path) in caplog.text

    path.write_text(json.dumps({"bm25/nDCG@10": 0.5}))
    caplog.clear()
    assert load_baselines(path, 7) == {"bm25/nDCG@10": 0.5}
    assert caplog.text == ""


def test_two_worker_ddp_trains_a_legacy_head_model(ray_cluster, tmp_path, splade_tiny, prepared):
    """A legacy OpenSearch layout (base encoder + neural_sparse_head.pt) trains under 2-worker DDP:
    the base is loaded without its pooler, whose unused parameters would make DDP fail on the
    second step. The exported model keeps the legacy layout and loads."""
    from spladeray.model import SpladeEncoder
    from spladeray.model.loading import LEGACY_HEAD_FILE
    from spladeray.train import run_train

    from helpers import build_tiny_base, tiny_tokenizer

    tokenizer = tiny_tokenizer(splade_tiny)
    legacy = tmp_path / "legacy"
    base = build_tiny_base(tokenizer, legacy)
    torch.manual_seed(0)
    head = torch.nn.Linear(base.config.hidden_size, len(tokenizer))
    torch.save(head.state_dict(), legacy / LEGACY_HEAD_FILE)
    collectives = tmp_path / "collectives"
    cfg = make_cfg(
        tmp_path,
        legacy,
        prepared,
        max_steps=3,
        tensorboard=False,
        checkpoint={"every_steps": 3, "num_to_keep": 1},
        debug={"collective_log_dir": str(collectives)},
    )
    result = run_train(cfg)
    assert result.metrics["step"] == 3 and result.metrics["world_size"] == 2
    assert_collectives_on_worker_device(collectives, ranks={0, 1})
    enc = SpladeEncoder.from_pretrained(str(result.model_dir))
    assert enc.head is not None and enc.metadata["layout"] == "legacy_head"
    assert enc.encode_documents(["cell protein gene"])[0]


def test_autocast_auto_falls_back_to_fp32_without_bf16(monkeypatch, caplog):
    """precision auto: BF16 on a GPU that has it; fp32 and a warning on one without."""
    from spladeray.train.step import autocast_dtype

    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "old GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(cuda, "auto") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with caplog.at_level("WARNING", logger="spladeray.train.step"):
        assert autocast_dtype(cuda, "auto") is None
    assert "does not support bf16" in caplog.text
    assert autocast_dtype(cuda, "fp32") is None
    assert autocast_dtype(torch.device("cpu"), "auto") is None
    assert autocast_dtype(torch.device("cpu"), "bf16") is torch.bfloat16


def test_objective_terms_and_schedule(tmp_path):
    """The objective names every term, warms the regulariser up quadratically, and a doc-only
    model has no query regulariser (lambda 0, no term)."""
    from spladeray.config import parse_config
    from spladeray.train.losses import SparseBatch
    from spladeray.train.objective import SpladeObjective

    cfg = make_cfg(tmp_path, tmp_path, tmp_path, max_steps=30).train
    torch.manual_seed(0)
    b, n, v = 4, 2, 10
    batch = SparseBatch(
        queries=torch.rand(b, v),
        positives=torch.rand(b, v),
        negatives=torch.rand(b, n, v),
        teacher={"ensemble": torch.rand(b, 1 + n), "dense": torch.rand(b, 1 + n)},
    )
    full = SpladeObjective(cfg, doc_only=False)
    out = full(batch, step=1)
    assert set(out.terms) == {
        "loss",
        "loss/infonce",
        "loss/margin_mse",
        "loss/kl",
        "flops/document",
        "flops/query",
    }
    lam = full.lambdas(1)  # warmup_steps 2: lambda * (1/2)^2
    assert lam == {"lambda/query": pytest.approx(2.5e-4), "lambda/document": pytest.approx(2.5e-4)}
    expected = (
        out.terms["loss/infonce"]
        + 0.1 * out.terms["loss/margin_mse"]
        + 0.5 * out.terms["loss/kl"]
        + lam["lambda/document"] * out.terms["flops/document"]
        + lam["lambda/query"] * out.terms["flops/query"]
    )
    assert out.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert full.lambdas(5)["lambda/document"] == pytest.approx(1e-3)

    doc_only = SpladeObjective(cfg, doc_only=True)
    out = doc_only(batch, step=5)
    assert "flops/query" not in out.terms and doc_only.lambdas(5)["lambda/query"] == 0.0
    default_warmup = parse_config(
        {"model": {"path": str(tmp_path)}, "train": {"max_steps": 30}}
    ).train
    assert SpladeObjective(default_warmup, doc_only=False).warmup_steps == 10


def test_optimizer_groups_decay_and_no_decay(tmp_path, tiny_model):
    """Matrices decay; biases and norms do not; every trainable parameter is in one group."""
    from spladeray.model.loading import load_encoder
    from spladeray.train.optim import build_optimizer

    encoder = load_encoder(str(tiny_model))
    tc = make_cfg(tmp_path, tiny_model, tmp_path, weight_decay=0.05).train
    optimizer = build_optimizer(encoder, tc)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and no_decay["params"]
    grouped = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert grouped == {id(p) for p in encoder.parameters() if p.requires_grad}


def test_rng_state_is_the_worker_device_only(monkeypatch):
    """A checkpoint's RNG holds the worker's own GPU only; an old one (every GPU) still loads,
    and a resume that sees fewer GPUs takes the entry of its own device."""
    from spladeray.train import checkpoint

    calls = {}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: f"state of {device}")
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device: calls.update({str(device): state})
    )
    cuda1 = torch.device("cuda", 1)
    state = checkpoint.rng_state(cuda1)
    assert state["cuda_device"] == "state of cuda:1" and "cuda" not in state
    assert "cuda_device" not in checkpoint.rng_state(torch.device("cpu"))
    checkpoint.set_rng_state(state, cuda1)
    assert calls == {"cuda:1": "state of cuda:1"}
    calls.clear()
    old = {**checkpoint.rng_state(), "cuda": ["gpu0", "gpu1", "gpu2"]}
    checkpoint.set_rng_state(old, cuda1)
    assert calls == {"cuda:1": "gpu1"}
    calls.clear()
    checkpoint.set_rng_state(old, torch.device("cuda", 5))  # fewer GPUs saved than this index
    assert calls == {}


def test_train_gpu_bench_builds_the_8gpu_config_on_cpu(tmp_path):
    """bench/train_gpu.py: its arguments and the config it derives from configs/train_8gpu.yaml
    (1 worker, NCCL, BF16, checkpoint + restart), checked where there is no GPU."""
    import importlib.util

    root = ROOT
    spec = importlib.util.spec_from_file_location("bench_train_gpu", root / "bench/train_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.parse_args(["--steps", "4", "--batch-size", "8", "--negatives", "3"])
    cfg = bench.gpu_config(args, model_dir=tmp_path / "m", data_dir=tmp_path / "d", work=tmp_path)
    tc = cfg.train
    assert (tc.num_workers, tc.use_gpu, tc.backend, tc.precision) == (1, True, "nccl", "bf16")
    assert (tc.max_steps, tc.checkpoint.every_steps, tc.debug.fail_at_step) == (12, 4, 5)
    assert tc.max_failures >= 1 and tc.batch_size == 8 and tc.num_negatives == 3
    assert cfg.ray.address is None and tc.storage_path == str(tmp_path / "ray")
    with pytest.raises(SystemExit):
        bench.parse_args(["--steps", "1"])


def test_ray_metric_names_are_prometheus_identifiers():
    from spladeray.train.metrics import ray_metric_name

    assert ray_metric_name("loss/infonce") == "spladeray_train_loss_infonce"
    assert ray_metric_name("eval/nDCG@10") == "spladeray_train_eval_nDCG_at_10"
    assert ray_metric_name("step") == "spladeray_train_step"
