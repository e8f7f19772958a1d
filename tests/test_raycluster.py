"""spladeray.raycluster: capacity checks and device resolution on the shared local cluster."""

from __future__ import annotations

import pytest


def test_capacity_check_names_the_shortfall(ray_cluster):
    from spladeray.raycluster import check_capacity

    check_capacity("a small job", cpus=1)  # fits: no error
    with pytest.raises(RuntimeError) as err:
        check_capacity("the bulk job", cpus=1000, gpus=2, hint="lower index.actors")
    message = str(err.value)
    assert "the bulk job needs 1000 CPUs" in message and "2 GPUs but the cluster has 0" in message
    assert message.endswith("; lower index.actors")


def test_capacity_check_only_warns_on_an_autoscaling_cluster(ray_cluster, monkeypatch, caplog):
    from spladeray.raycluster import AUTOSCALING_ENV, check_capacity

    monkeypatch.setenv(AUTOSCALING_ENV, "1")
    with caplog.at_level("WARNING", logger="spladeray.raycluster"):
        check_capacity("prepare", gpus=8)
    assert "prepare needs 8 GPUs" in caplog.text and AUTOSCALING_ENV in caplog.text


def test_auto_device_is_cpu_in_a_worker_that_holds_no_gpu(ray_cluster):
    import ray

    from spladeray.raycluster import resolve_device

    @ray.remote(num_gpus=0)
    def device() -> str:
        return str(resolve_device("auto"))

    assert ray.get(device.remote()) == "cpu"
    assert str(resolve_device("cpu")) == "cpu"
