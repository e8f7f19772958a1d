"""What a training run reports: MLflow on a real local tracking server, TensorBoard event files.

One tiny run (1 worker, 3 steps, a report every step) writes both; the tests read them back with
the tools' own clients (``MlflowClient``, TensorBoard's ``EventAccumulator``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.timeout(900)

STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` with a sqlite backend and a local artifact store, on 127.0.0.1."""
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [
            exe,
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        # no background job runner (7 huey consumer processes): only tracking is tested
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        if proc.poll() is not None:
            log.flush()
            pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.terminate()
            pytest.fail(f"mlflow server not up: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(1)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def trained(ray_cluster, mlflow_server, tmp_path_factory, tiny_model, prepared):
    """One tiny run with TensorBoard and MLflow on."""
    from test_train import make_cfg

    from spladeray.train import run_train

    tmp = tmp_path_factory.mktemp("run")
    cfg = make_cfg(
        tmp,
        tiny_model,
        prepared,
        num_workers=1,
        max_steps=STEPS,
        log_every_steps=1,
        checkpoint={"every_steps": STEPS, "num_to_keep": 1},
        tensorboard=True,
        mlflow={"tracking_uri": mlflow_server, "experiment": "spladeray-test"},
    )
    result = run_train(cfg, prepare=False)
    return cfg, result


def test_mlflow_receives_params_metrics_per_step_and_the_model(trained, mlflow_server):
    from mlflow.tracking import MlflowClient

    cfg, _ = trained
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("spladeray-test")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "t"
    params = run.data.params
    assert params["train.max_steps"] == str(STEPS)
    assert params["train.lr"] == "0.001"
    assert params["train.batch_size"] == "4"
    assert params["model.max_document_length"] == "256"
    assert "infonce" in params["train.losses"]
    for key in ("loss", "loss/infonce", "lambda/document", "active_dims/document", "lr"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(1, STEPS + 1)), key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/config.json", "model/modules.json", "model/spladeray.json"} <= artifacts
    local = Path(
        client.download_artifacts(
            run.info.run_id, "model", dst_path=str(Path(cfg.train.output_dir) / "dl")
        )
    )
    from spladeray.model import SpladeEncoder

    assert SpladeEncoder.from_pretrained(str(local)).encode_documents(["insulin"])[0]


def test_tensorboard_events_hold_loss_terms_lambda_and_active_dims(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, _ = trained
    tb_dir = Path(cfg.train.output_dir) / "t" / "tensorboard"
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {
        "loss",
        "loss/infonce",
        "loss/margin_mse",
        "loss/kl",
        "lambda/query",
        "lambda/document",
        "active_dims/query",
        "active_dims/document",
    }
    assert expected <= tags, expected - tags
    assert any(
        t.endswith("/document") and t.split("/")[0] not in {"lambda", "active_dims"} for t in tags
    )
    for tag in expected:
        assert [e.step for e in acc.Scalars(tag)] == list(range(1, STEPS + 1)), tag
    # the FLOPS weight warms up: lambda grows over the steps (quadratic warm-up, 2 steps)
    lam = [e.value for e in acc.Scalars("lambda/document")]
    assert lam[0] < lam[-1] and lam[-1] == pytest.approx(1e-3)
    assert all(e.value > 0 for e in acc.Scalars("active_dims/document"))


def test_metrics_writer_alone_reaches_mlflow_and_tensorboard(
    mlflow_server, tmp_path, splade_tiny, monkeypatch
):
    """The writer without a training run (no Ray): params, one metric per step, the model dir.
    Credentials a ``${VAR}`` put into the config are redacted from the params (issue 29 item 12).
    """
    monkeypatch.setenv("HF_TOKEN", "hf_s3cretTokenValue")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from spladeray.config import TrainMlflowConfig
    from spladeray.train.metrics import MetricsWriter

    writer = MetricsWriter(
        enabled=True,
        tb_dir=tmp_path / "tb",
        mlflow_cfg=TrainMlflowConfig(tracking_uri=mlflow_server, experiment="writer-only"),
        run_name="w",
        params={
            "train": {"lr": 0.001, "losses": [{"name": "infonce"}], "eval": None},
            "secrets": {
                "out": "s3://b/runs?X-Amz-Signature=sig123",
                "uri": "https://bob:pw-secret1@mlflow.example/x",
                "name": "run-hf_s3cretTokenValue",
                "api_key": "plain-key-value",
            },
        },
    )
    for step in (1, 2):
        writer.write(
            {"loss": 1.0 / step, "lambda/document": 1e-3 * step, "eval/nDCG@10": 0.5}, step
        )
    writer.log_model(splade_tiny)
    writer.close()

    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.search_runs([client.get_experiment_by_name("writer-only").experiment_id])[0]
    assert run.data.params == {
        "train.lr": "0.001",
        "train.losses": '[{"name": "infonce"}]',
        "secrets.out": "s3://b/runs?X-Amz-Signature=REDACTED",
        "secrets.uri": "https://mlflow.example/x",
        "secrets.name": "run-REDACTED",
        "secrets.api_key": "REDACTED",
    }
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert client.get_metric_history(run.info.run_id, "eval/nDCG_at_10")
    assert "model/config.json" in {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("lambda/document")] == [1, 2]
