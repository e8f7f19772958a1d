"""spladeray.outputs: which outputs a job writes, refusing a Ray job's unpacked working dir, and
the jobs' one-line summary.

A "Ray working-dir copy" here is a real directory laid out as Ray lays it out
(``<temp>/session_x/runtime_resources/working_dir_files/_ray_pkg_<hash>/``, holding a
``pyproject.toml`` and the shipped configs), so config paths resolve inside it exactly as under
``ray job submit``; tests/e2e/test_cluster.py submits real jobs.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from spladeray.config import load_config, parse_config
from spladeray.outputs import (
    OutputLocationError,
    check_outputs,
    demo_outputs,
    evaluate_outputs,
    export_outputs,
    index_outputs,
    mlflow_outputs,
    prepare_outputs,
    ray_working_dir_copy,
    submitted_job,
    summary_line,
    train_outputs,
)

from helpers import ROOT

PKG = "runtime_resources/working_dir_files/_ray_pkg_0123abcd"
JOB_ENV = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {"working_dir": "gcs://x"}})}


@pytest.fixture
def ray_copy(tmp_path, monkeypatch) -> Path:
    """The checkout's configs in a directory laid out like Ray's copy of a job's working dir,
    with ``SPLADERAY_RUNS`` unset (the default the issue is about)."""
    monkeypatch.delenv("SPLADERAY_RUNS", raising=False)
    copy = tmp_path / "session_2026" / PKG
    shutil.copytree(ROOT / "configs", copy / "configs")
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


def test_a_path_inside_a_working_dir_copy_names_that_copy(tmp_path):
    copy = f"/tmp/ray/session_1/{PKG}"
    assert ray_working_dir_copy(f"{copy}/runs/demo/train") == copy
    assert ray_working_dir_copy(copy) == copy
    # a remote working_dir URI unpacks under another name in the same folder
    assert ray_working_dir_copy("/r/runtime_resources/working_dir_files/s3_b_pkg/x") == (
        "/r/runtime_resources/working_dir_files/s3_b_pkg"
    )
    # relative paths resolve against the given directory (the job's cwd)
    assert ray_working_dir_copy("runs/export", cwd=f"{copy}/jobs") == copy
    assert ray_working_dir_copy(f"file://{copy}/runs") == copy


@pytest.mark.parametrize(
    "location",
    [
        "/work/checkout/runs/demo",
        "/tmp/ray/session_1/runtime_resources/working_dir_files",  # the folder, not a copy
        "/tmp/ray/session_1/runtime_resources/py_modules_files/_ray_pkg_1/x",
        "/data/working_dir_files/runtime_resources/_ray_pkg_1",  # components out of order
        f"s3://bucket/{PKG}/runs",  # object storage lasts, whatever the key says
        "http://mlflow:5000",
    ],
)
def test_other_locations_are_not_a_copy(location):
    assert ray_working_dir_copy(location, cwd="/work/checkout") is None


def test_submitted_job_reads_the_job_supervisors_variable():
    assert submitted_job(JOB_ENV)
    local = {"runtime_env": {"working_dir": "local:///srv/code"}}  # used in place, not a copy
    assert not submitted_job({"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(local)})
    assert not submitted_job({"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {}})})
    assert not submitted_job({"RAY_JOB_CONFIG_JSON_ENV_VAR": "not json"})
    assert not submitted_job({})


def test_a_local_run_of_the_default_config_passes_with_absolute_paths(monkeypatch):
    """``python jobs/X.py`` from the checkout (ray.address null): never refused."""
    monkeypatch.delenv("SPLADERAY_RUNS", raising=False)
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    assert cfg.ray.address is None
    outputs = check_outputs(demo_outputs(cfg, full=True), cwd=str(ROOT), environ={})
    runs = ROOT / "runs" / "demo"
    assert {o.what: o.location for o in outputs} == {
        "prepared data": str(runs / "prepared"),
        "model": str(runs / "train" / "demo" / "model"),
        "checkpoints": str(runs / "train" / "ray" / "demo"),
        "tensorboard": str(runs / "train" / "demo" / "tensorboard"),
        "ML Commons zips": str(runs / "export"),
        "index 'scifact-finetuned'": str(runs / "index"),
        "reports": str(runs / "eval"),
    }


def test_the_default_config_in_a_working_dir_copy_is_refused_naming_every_key(ray_copy):
    cfg = load_config(ray_copy / "configs" / "demo.yaml")
    with pytest.raises(OutputLocationError) as err:
        check_outputs(train_outputs(cfg), cwd=str(ray_copy), environ=JOB_ENV)
    message = str(err.value)
    assert "under `ray job submit`" in message
    assert str(ray_copy) in message
    for key, what in [
        ("prepare.output_dir", "prepared data"),
        ("train.output_dir", "model"),
        ("train.output_dir", "checkpoints"),
        ("train.output_dir", "tensorboard"),
    ]:
        assert f"  {key}: {what} -> {ray_copy}/runs/demo/" in message, message
    assert "SPLADERAY_RUNS" in message and "s3://my-bucket/spladeray/runs" in message
    assert "--set prepare.output_dir=" in message
    assert "-- python jobs/train.py" in message


@pytest.mark.parametrize(
    "outputs",
    [
        lambda cfg: prepare_outputs(cfg.prepare),
        lambda cfg: evaluate_outputs(cfg),
        lambda cfg: export_outputs(cfg),
        lambda cfg: export_outputs(cfg.model_copy(update={"export": None})),  # runs/export
        lambda cfg: export_outputs(cfg, hf=True),
        lambda cfg: index_outputs(cfg),
        lambda cfg: demo_outputs(cfg, full=True),
        lambda cfg: demo_outputs(cfg, full=False),
    ],
    ids=[
        "prepare",
        "evaluate",
        "export",
        "export-default",
        "export-hf",
        "index",
        "demo",
        "demo-search",
    ],
)
def test_every_jobs_outputs_are_checked(ray_copy, outputs):
    cfg = load_config(ray_copy / "configs" / "demo.yaml")
    with pytest.raises(OutputLocationError, match="SPLADERAY_RUNS"):
        check_outputs(outputs(cfg), cwd=str(ray_copy), environ=JOB_ENV)


def test_an_absolute_runs_root_passes_in_a_working_dir_copy(ray_copy, tmp_path, monkeypatch):
    runs = str(tmp_path / "shared" / "runs")
    monkeypatch.setenv("SPLADERAY_RUNS", runs)
    cfg = load_config(ray_copy / "configs" / "demo.yaml")
    outputs = check_outputs(demo_outputs(cfg, full=True), cwd=str(ray_copy), environ=JOB_ENV)
    assert len(outputs) == 7
    assert {o.location.split("/demo/")[0] for o in outputs} == {runs}


def test_a_bucket_passes_except_for_the_embedded_index(ray_copy, monkeypatch):
    runs = "s3://bucket/spladeray/runs"
    monkeypatch.setenv("SPLADERAY_RUNS", runs)
    cfg = load_config(ray_copy / "configs" / "demo.yaml")
    outputs = check_outputs(
        [*train_outputs(cfg), *export_outputs(cfg), *evaluate_outputs(cfg)], cwd=str(ray_copy)
    )
    assert {o.location.split("/demo/")[0] for o in outputs} == {runs}
    # index.path is a local path: an s3:// value resolves inside the copy, and is refused
    with pytest.raises(OutputLocationError) as err:
        check_outputs(index_outputs(cfg), cwd=str(ray_copy))
    assert "index.path takes a local path only" in str(err.value)
    assert "--set index.path=/mnt/shared/spladeray/index" in str(err.value)


def test_a_key_set_on_its_own_also_counts(ray_copy, tmp_path):
    shared = tmp_path / "shared"
    cfg = load_config(
        ray_copy / "configs" / "demo.yaml",
        [
            f"prepare.output_dir={shared}/p",
            f"train.data_dir={shared}/p",
            f"train.output_dir={shared}/t",
        ],
    )
    outputs = check_outputs(train_outputs(cfg), cwd=str(ray_copy), environ=JOB_ENV)
    assert all(o.location.startswith(str(shared)) for o in outputs)
    # storage_path (checkpoints) left inside the copy: refused, naming that key
    cfg.train.storage_path = str(ray_copy / "ckpt")
    with pytest.raises(OutputLocationError, match=r"train\.storage_path: checkpoints"):
        check_outputs(train_outputs(cfg), cwd=str(ray_copy), environ=JOB_ENV)


def test_mlflow_locations():
    key = "train.mlflow.tracking_uri"
    assert [o.location for o in mlflow_outputs("http://mlflow:5000")] == ["http://mlflow:5000"]
    assert [o.location for o in mlflow_outputs("file:///srv/mlruns")] == ["/srv/mlruns"]
    assert [o.location for o in mlflow_outputs("mlruns")] == ["mlruns"]
    # a database store keeps artifacts in ./mlruns of the process that logs: the job's cwd
    assert [(o.what, o.key, o.location) for o in mlflow_outputs("sqlite:///mlflow.db")] == [
        ("mlflow", key, "mlflow.db"),
        ("mlflow artifacts", key, "mlruns"),
    ]
    with pytest.raises(OutputLocationError, match="mlflow artifacts"):
        check_outputs(mlflow_outputs("postgresql://db/mlflow"), cwd=f"/tmp/ray/s/{PKG}")


def test_train_outputs_follow_the_config(tmp_path):
    cfg = parse_config(
        {
            "run_name": "r",
            "model": {"path": str(tmp_path)},
            "train": {
                "output_dir": "s3://b/out",
                "data_dir": "s3://b/data",
                "storage_path": "s3://b/ckpt",
                "tensorboard": False,
                "mlflow": {"tracking_uri": "https://mlflow.example.com"},
            },
        }
    )
    assert [(o.what, o.key, o.location) for o in train_outputs(cfg)] == [
        ("model", "train.output_dir", "s3://b/out/r/model"),
        ("checkpoints", "train.storage_path", "s3://b/ckpt/r"),
        ("mlflow", "train.mlflow.tracking_uri", "https://mlflow.example.com"),
    ]


def test_an_opensearch_index_is_named_by_its_host_without_credentials(tmp_path):
    cfg = parse_config(
        {
            "model": {"path": str(tmp_path)},
            "index": {
                "backend": "opensearch",
                "name": "docs",
                "opensearch": {"hosts": ["https://user:secret@search.example.com:9200/"]},
            },
        }
    )
    (out,) = index_outputs(cfg)
    assert out.location == "https://search.example.com:9200/docs"
    cfg.index.opensearch.hosts = ["localhost:9200"]
    assert index_outputs(cfg)[0].location == "http://localhost:9200/docs"
    assert check_outputs(index_outputs(cfg), cwd=f"/tmp/ray/s/{PKG}")  # not a local path


def test_summary_line(tmp_path):
    from spladeray.outputs import Output

    outputs = [
        Output("model", "train.output_dir", "s3://b/r/model"),
        Output("checkpoints", "train.output_dir", "/shared/ray/r"),
        Output("checkpoints", "train.output_dir", "/shared/ray/r"),  # said once
        Output("tensorboard", "train.output_dir", "/shared/r/tensorboard"),
    ]
    assert summary_line("train", outputs) == (
        "[train] wrote: model s3://b/r/model, checkpoints /shared/ray/r, "
        "tensorboard /shared/r/tensorboard"
    )
    assert summary_line("train", outputs, skip=["model"]).startswith("[train] wrote: checkp")
    assert summary_line("index", []) == "[index] wrote: nothing"


@pytest.mark.parametrize(
    "job, flags",
    [
        ("prepare", []),
        ("train", []),
        ("evaluate", []),
        ("export", []),
        ("export", ["--format", "hf"]),
        ("index", []),
        ("demo", []),
        ("sweep", ["--sweep", "configs/sweeps/demo.yaml"]),
    ],
)
def test_a_job_in_a_working_dir_copy_exits_with_the_message_before_any_work(
    ray_copy, monkeypatch, capsys, job, flags
):
    """The entry point itself (jobs/X.py on the copy's config, run in-process as ``__main__``
    for speed): it exits with the message before Ray starts, and nothing is written."""
    import runpy

    import ray

    monkeypatch.syspath_prepend(str(ROOT / "jobs"))
    monkeypatch.chdir(ray_copy)
    for name, value in JOB_ENV.items():
        monkeypatch.setenv(name, value)
    script = ROOT / "jobs" / f"{job}.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--config", "configs/demo.yaml", *flags])
    was_up = ray.is_initialized()
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(script), run_name="__main__")
    message = str(exit_.value.code)
    assert message.startswith("error: refusing to start: this job runs under `ray job submit`")
    assert f"-- python jobs/{job}.py" in message
    assert "[ray]" not in capsys.readouterr().out
    assert ray.is_initialized() == was_up
    assert not (ray_copy / "runs").exists()
