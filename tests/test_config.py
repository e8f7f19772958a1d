"""Config loading: errors name the key and the file; env expansion; path resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from spladeray.config import ConfigError, expand_env, load_config
from spladeray.paths import assets_root

ROOT = Path(__file__).resolve().parents[1]


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
    assert cfg.data.beir_dir.is_dir()
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
