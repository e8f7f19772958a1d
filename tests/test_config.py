"""Config loading: errors name the key and the file; env expansion; path resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from spladeray.config import ConfigError, expand_env, load_config
from spladeray.paths import assets_root

from helpers import ROOT


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "configs").mkdir(exist_ok=True)
    path = tmp_path / "configs" / "x.yaml"
    path.write_text(text)
    return path


def test_demo_config_loads_and_points_at_assets():
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    assert Path(cfg.model.path) == assets_root() / "models" / "splade-tiny"
    assert Path(cfg.model.path).is_dir()
    assert Path(cfg.data.beir_dir).is_dir()
    assert cfg.index.backend == "local"


def test_unknown_key_names_key_and_file(tmp_path):
    path = _write(tmp_path, "model:\n  path: m\n  max_lenght: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "model.max_lenght" in str(err.value)
    assert str(path) in str(err.value)


def test_wrong_type_names_key_and_file(tmp_path):
    path = _write(tmp_path, "model:\n  path: m\n  max_query_length: lots\nindex:\n  backend: s3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "model.max_query_length" in msg and "index.backend" in msg and str(path) in msg


def test_missing_required_section(tmp_path):
    with pytest.raises(ConfigError, match="model: Field required"):
        load_config(_write(tmp_path, "run_name: x\n"))


def test_env_expansion_and_relative_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_MODEL_DIR", "models/mine")  # org/name shape, but it exists locally
    monkeypatch.delenv("UNSET_VAR_X", raising=False)
    (tmp_path / "models" / "mine").mkdir(parents=True)
    path = _write(
        tmp_path,
        "model:\n  path: ${MY_MODEL_DIR}\nindex:\n  path: ${UNSET_VAR_X:-runs/idx}\n",
    )
    cfg = load_config(path)
    assert cfg.model.path == str(tmp_path / "models" / "mine")
    assert cfg.index.path == tmp_path / "runs" / "idx"


def test_hub_ids_are_kept(tmp_path):
    cfg = load_config(_write(tmp_path, "model:\n  path: naver/splade-cocondenser-ensembledistil\n"))
    assert cfg.model.path == "naver/splade-cocondenser-ensembledistil"


def test_unset_env_without_default_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    with pytest.raises(ConfigError, match="NOPE_NOT_SET"):
        load_config(_write(tmp_path, "model:\n  path: ${NOPE_NOT_SET}\n"))


def test_overrides(tmp_path):
    cfg = load_config(_write(tmp_path, "model:\n  path: m\n"), ["model.top_k=32", "seed=7"])
    assert cfg.model.top_k == 32 and cfg.seed == 7
    with pytest.raises(ConfigError, match="model.top_k"):
        load_config(_write(tmp_path, "model:\n  path: m\n"), ["model.top_k=-1"])


def test_assets_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("SPLADERAY_ASSETS", str(tmp_path))
    assert assets_root() == tmp_path.resolve()
    assert expand_env("${SPLADERAY_ASSETS:-x}/m") == f"{tmp_path}/m"


def test_not_yaml_and_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


# ---------------------------------------------------------------------------- jobs/_common.py
JOBS = ("prepare", "train", "index", "evaluate", "export", "demo")


def _jobs_common():
    """jobs/_common.py as a module (jobs/ is not a package: the jobs import it as a sibling)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("jobs_common", ROOT / "jobs" / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_jobs_without_config_use_the_default_and_print_it(capsys):
    common = _jobs_common()
    cfg = common.load(common.parse_args("a job", argv=[]), require="train")
    default = (ROOT / common.DEFAULT_CONFIG).resolve()
    assert cfg.source == default and cfg.prepare is not None and cfg.train is not None
    out = capsys.readouterr().out
    assert f"[config] {default} (the default" in out


def test_jobs_name_the_config_they_were_given(tmp_path, capsys):
    common = _jobs_common()
    path = _write(tmp_path, "model:\n  path: m\n")
    cfg = common.load(common.parse_args("a job", argv=["--config", str(path), "--set", "seed=3"]))
    assert cfg.seed == 3
    assert f"[config] {path.resolve()}\n" in capsys.readouterr().out


def test_a_job_missing_its_section_exits_with_one_message(tmp_path):
    common = _jobs_common()
    path = _write(tmp_path, "model:\n  path: m\n")
    args = common.parse_args("a job", argv=["--config", str(path)])
    with pytest.raises(SystemExit, match=r"x\.yaml: no train: section, and this job needs one"):
        common.load(args, require="train")
    with pytest.raises(SystemExit, match=r"model\.pooling"):
        common.load(
            common.parse_args("a job", argv=["--config", str(path), "--set", "model.pooling=mean"])
        )


@pytest.mark.parametrize("job", JOBS)
def test_every_job_is_executable_and_its_help_names_the_default(job):
    import os
    import subprocess
    import sys

    path = ROOT / "jobs" / f"{job}.py"
    assert path.read_text().startswith("#!/usr/bin/env python3\n")
    assert os.access(path, os.X_OK)
    out = subprocess.run(
        [sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "default: configs/demo.yaml" in " ".join(out.stdout.split())


# ---------------------------------------------------------------------------- Ray dashboard
def test_a_local_cluster_gets_the_dashboard_on_127_0_0_1_and_prints_its_url(monkeypatch, capsys):
    """ensure_ray's arguments to ray.init, without starting Ray."""
    import ray

    from spladeray.config import RayConfig
    from spladeray.raycluster import ensure_ray

    calls = []

    class Context:
        dashboard_url = "127.0.0.1:8265"

    def fake_init(**kwargs):
        calls.append(kwargs)
        return Context()

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ensure_ray(None)
    assert calls[-1]["include_dashboard"] is True
    assert calls[-1]["dashboard_host"] == "127.0.0.1"
    assert "[ray] dashboard: http://127.0.0.1:8265" in capsys.readouterr().out
    ensure_ray(RayConfig(include_dashboard=False, num_cpus=2))
    assert calls[-1]["include_dashboard"] is False and calls[-1]["num_cpus"] == 2
    ensure_ray(RayConfig(address="auto"))  # joining: the cluster's own settings stand
    assert "include_dashboard" not in calls[-1] and calls[-1]["address"] == "auto"


# ---------------------------------------------------------------------------- serve/config.yaml
SERVE_ENV = ("SPLADERAY_MODEL", "SPLADERAY_INDEX_BACKEND", "SPLADERAY_INDEX", "OPENSEARCH_URL")


def _serve_app() -> dict:
    import yaml

    (app,) = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())["applications"]
    return app


def test_serve_config_is_a_serve_deploy_file_for_the_installed_builder():
    """What ``serve deploy`` checks first (Ray's schema), and an import path that a package
    install provides (no repo-root module), taking the args the file gives it."""
    import importlib

    import yaml
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serve" / "config.yaml").read_text()))
    app = _serve_app()
    module, _, attr = app["import_path"].partition(":")
    assert module.startswith("spladeray.")
    builder = getattr(importlib.import_module(module), attr)
    assert callable(builder)
    assert set(app["args"]) <= {"config", "overrides"}


def test_serve_config_reads_model_and_index_from_the_environment(monkeypatch):
    from spladeray.serving.app import resolve_config_path

    args = _serve_app()["args"]
    path = resolve_config_path(args["config"])
    for name in SERVE_ENV:
        monkeypatch.delenv(name, raising=False)
    demo = load_config(path, args["overrides"])
    assert Path(demo.model.path) == assets_root() / "models" / "splade-tiny"
    assert demo.index.backend == "local" and demo.index.name == "scifact"

    monkeypatch.setenv("SPLADERAY_MODEL", "/models/mine")
    monkeypatch.setenv("SPLADERAY_INDEX_BACKEND", "opensearch")
    monkeypatch.setenv("SPLADERAY_INDEX", "docs")
    monkeypatch.setenv("OPENSEARCH_URL", "https://search.example.com:9200")
    cluster = load_config(path, args["overrides"])
    assert cluster.model.path == "/models/mine"
    assert cluster.index.backend == "opensearch" and cluster.index.name == "docs"
    assert cluster.index.opensearch.hosts == ["https://search.example.com:9200"]


def test_serve_config_builds_the_app_with_its_args(monkeypatch):
    """The builder ``serve deploy`` would call, with serve/config.yaml's args (no Ray needed)."""
    import importlib

    from ray.serve import Application

    for name in SERVE_ENV:
        monkeypatch.delenv(name, raising=False)
    app = _serve_app()
    module, _, attr = app["import_path"].partition(":")
    built = getattr(importlib.import_module(module), attr)(app["args"])
    assert isinstance(built, Application)


def test_min_workers_makes_training_elastic_and_is_checked(tmp_path):
    from spladeray.config import parse_config

    from helpers import tiny_train_section

    def train(**kw):
        section = tiny_train_section(str(tmp_path / "out"), str(tmp_path / "data"), **kw)
        return parse_config({"model": {"path": str(tmp_path)}, "train": section}).train

    assert train(num_workers=2).workers == 2
    assert train(num_workers=4, min_workers=2).workers == (2, 4)
    assert train(num_workers=2, min_workers=2).workers == 2
    with pytest.raises(ConfigError, match=r"min_workers \(3\) must not exceed num_workers \(2\)"):
        train(num_workers=2, min_workers=3)


def test_nested_env_defaults():
    """configs/train_8gpu.yaml's evaluation dir: ``${A:-${B:-runs}/beir}`` falls back level by level."""
    pattern = "${EVAL:-${RUNS:-runs}/beir/scifact}"
    assert expand_env(pattern, {}) == "runs/beir/scifact"
    assert expand_env(pattern, {"RUNS": "s3://b/runs"}) == "s3://b/runs/beir/scifact"
    assert expand_env(pattern, {"RUNS": "s3://b/runs", "EVAL": "/data/sf"}) == "/data/sf"
    assert expand_env("${A:-x}-${B:-y}", {"B": "z"}) == "x-z"


def test_8gpu_config_evaluates_beside_the_runs(monkeypatch):
    """Its evaluation dir defaults under $SPLADERAY_RUNS (what every node reads), never ../shared."""
    monkeypatch.delenv("SPLADERAY_EVAL_BEIR", raising=False)
    monkeypatch.setenv("SPLADERAY_RUNS", "s3://bucket/runs")
    cfg = load_config(ROOT / "configs" / "train_8gpu.yaml")
    assert cfg.train.eval.beir_dir == "s3://bucket/runs/beir/scifact"
