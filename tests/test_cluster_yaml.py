"""cluster.yaml is a valid Ray cluster launcher config for the installed Ray, with the shape the
docs promise: a CPU head and autoscaling 8-GPU worker groups that install this package."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest
import yaml

from helpers import ROOT

EIGHT_GPU_INSTANCES = {
    "p4d.24xlarge",
    "p4de.24xlarge",
    "p5.48xlarge",
    "p5e.48xlarge",
    "p5en.48xlarge",
}


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_validates_against_rays_schema(config):
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)


def test_passes_ray_up_validation(config):
    """What ``ray up`` runs before touching the cloud: defaults merged, then validated."""
    import copy

    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"


def test_cpu_head_and_autoscaling_8_gpu_workers(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert "GPU" not in head["resources"]
    assert not head["node_config"]["InstanceType"].startswith(("p", "g"))
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert workers
    for name, node in workers.items():
        assert node["resources"]["GPU"] == 8, name
        assert node["node_config"]["InstanceType"] in EIGHT_GPU_INSTANCES, name
        assert node.get("min_workers", 0) == 0 < node["max_workers"], name  # scales from zero
    assert config["max_workers"] >= max(n["max_workers"] for n in workers.values())


def test_nodes_install_the_package_and_keep_secrets_out(config):
    mounts = config["file_mounts"]
    ((remote, local),) = [(r, src) for r, src in mounts.items() if src == "."]
    assert remote.endswith("/spladeray")
    # Ray 2.60 token auth: every node gets the client's token and turns the mode on
    assert mounts["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    setup = "\n".join(config["setup_commands"])
    assert f'pip install -e "{remote}"' in setup
    text = (ROOT / "cluster.yaml").read_text()
    for needle in ("OPENSEARCH_PASSWORD=", "password:", "aws_secret_access_key"):
        assert needle not in text
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    # issue 29 item 11: the env files are read literally (never shell-sourced), the bucket
    # placeholder is written once, the token file is created under umask 077
    for c in ray_starts:
        assert "RAY_AUTH_MODE=token" in c and ". ~/.spladeray" not in c
        assert "spladeray.envfile ~/.spladeray/cluster.env ~/.spladeray/secrets.env --" in c
    assert "SPLADERAY_RUNS=s3://" in setup and text.count("CHANGE-ME") == 1
    assert "(umask 077 && mkdir -p ~/.ray" in text
    policy = json.loads((ROOT / "docs" / "iam-policy.json").read_text())
    actions = {a for st in policy["Statement"] for a in st["Action"]}
    assert {"s3:PutObject", "s3:ListBucket", "secretsmanager:GetSecretValue"} <= actions
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


def test_env_files_are_read_literally(tmp_path):
    """A $ or a backtick in a password stays as written (a shell's `. file` would expand it)."""
    import subprocess
    import sys

    from spladeray.envfile import parse

    text = "# secrets\nOPENSEARCH_PASSWORD=p$HOME`id`'x\nexport A='quoted $B'\n\nC=\"d\"\n"
    assert parse(text) == {"OPENSEARCH_PASSWORD": "p$HOME`id`'x", "A": "quoted $B", "C": "d"}
    with pytest.raises(ValueError, match="f:2: not a KEY=VALUE") as err:
        parse("A=1\nsecret value without key\n", "f")
    assert "secret value" not in str(err.value)
    env = tmp_path / "secrets.env"
    env.write_text(text)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "spladeray.envfile",
            str(env),
            str(tmp_path / "missing"),
            "--",
            sys.executable,
            "-c",
            "import os; print(os.environ['OPENSEARCH_PASSWORD'])",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "platform")},
    )
    assert out.stdout.strip() == "p$HOME`id`'x"


def test_docs_walk_through_the_launch(config):
    docs = (ROOT / "docs" / "production.md").read_text()
    for step in ("ray up cluster.yaml", "ray job submit", "serve deploy", "ray down cluster.yaml"):
        assert step in docs, step
    assert os.path.exists(ROOT / "cluster.yaml")
