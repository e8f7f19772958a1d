"""Connecting to Ray: the one place every stage starts or joins a cluster."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

AUTOSCALING_ENV = "SPLADERAY_AUTOSCALING"
"""Set (``1``) on clusters whose autoscaler adds nodes on demand: capacity checks only warn."""


def ensure_ray(ray_cfg=None, *, log_to_driver: bool | None = None) -> None:
    """Join the cluster a :class:`spladeray.config.RayConfig` names, or start a local one.

    Does nothing when Ray is already up (tests, a caller that initialised it). Joining an existing
    cluster (``ray.address`` set, or ``RAY_ADDRESS`` under ``ray job submit``) declares no
    resources: ``num_cpus`` / ``num_gpus`` / the dashboard settings apply only to a cluster we
    start. ``None`` means the defaults of ``RayConfig`` (a local cluster with its dashboard on
    127.0.0.1). Prints the dashboard's URL when the cluster has one. The job's worker processes
    run :func:`spladeray.raylogging.quiet_ray_train_logs` (Ray Train's placement-group cleaner
    would otherwise log a warning every second while the State API is unreachable).
    ``log_to_driver`` (default: true, false on the quiet console of :mod:`spladeray.console`)
    forwards the output of Ray's worker processes to this one.
    """
    import ray

    from spladeray import console
    from spladeray.config import RayConfig
    from spladeray.raylogging import worker_runtime_env

    if ray.is_initialized():
        return
    ray_cfg = ray_cfg if ray_cfg is not None else RayConfig()
    address = ray_cfg.address
    joining = address not in (None, "local") or (
        address is None and bool(os.environ.get("RAY_ADDRESS"))
    )
    runtime_env = worker_runtime_env()
    kwargs = {"address": address, **console.ray_init_options(runtime_env)}
    if log_to_driver is not None:
        kwargs["log_to_driver"] = log_to_driver
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    if not joining:
        kwargs.update(
            num_cpus=ray_cfg.num_cpus,
            num_gpus=ray_cfg.num_gpus,
            include_dashboard=ray_cfg.include_dashboard,
            dashboard_host=ray_cfg.dashboard_host,
        )
    url = ray.init(**kwargs).dashboard_url
    url = (url if "://" in url else "http://" + url) if url else None
    if url:
        print(f"[ray] dashboard: {url}", flush=True)
    console.after_ray_init(runtime_env, url)


def cluster_gpus() -> float:
    """GPUs the running Ray cluster has in total (0 when Ray is not initialised)."""
    import ray

    if not ray.is_initialized():
        return 0.0
    return float(ray.cluster_resources().get("GPU", 0.0))


def held_gpu_ids() -> list:
    """GPU ids the current Ray worker (actor, task or Train worker) holds; [] outside Ray.

    Ray 2.60 no longer hides GPUs (``CUDA_VISIBLE_DEVICES``) from actors that reserve none, so
    ``torch.cuda.is_available()`` is true in a CPU-only actor on a GPU node. Only what Ray
    assigned to this worker says whether it may use a GPU.
    """
    import ray

    if not ray.is_initialized():
        return []
    try:
        return list(ray.get_gpu_ids())
    except Exception:  # the driver of a job: no worker context
        return []


def resolve_device(requested: str = "auto"):
    """``auto`` -> ``cuda`` only when this process may use a GPU, else ``cpu``; others as given.

    Inside a Ray worker that means the worker holds a GPU (:func:`held_gpu_ids`); in a plain
    process (a notebook, the driver), that CUDA is available. An explicit ``cuda`` is honoured.
    """
    import torch

    if requested != "auto":
        return torch.device(requested)
    import ray

    in_worker = ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    if in_worker:
        return torch.device("cuda" if held_gpu_ids() and torch.cuda.is_available() else "cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_capacity(what: str, *, cpus: float = 0.0, gpus: float = 0.0, hint: str = "") -> None:
    """Fail fast, with the numbers, when Ray cannot place ``cpus`` / ``gpus`` for ``what``.

    Ray Data and Ray Train wait forever for resources that never come; a clear error now is
    better. Checks the cluster's totals (not what is free right now: others may be finishing).
    On a cluster that adds nodes on demand (``cluster.yaml`` sets ``SPLADERAY_AUTOSCALING=1``)
    the missing capacity may still come, so the shortfall is logged as a warning instead.
    """
    import ray

    res = ray.cluster_resources()
    short = []
    if cpus > res.get("CPU", 0.0) + 1e-9:
        short.append(f"{cpus:g} CPUs but the cluster has {res.get('CPU', 0.0):g}")
    if gpus > res.get("GPU", 0.0) + 1e-9:
        short.append(f"{gpus:g} GPUs but the cluster has {res.get('GPU', 0.0):g}")
    if not short:
        return
    message = f"{what} needs " + " and ".join(short)
    if os.environ.get(AUTOSCALING_ENV, "").lower() in ("1", "true", "yes"):
        logger.warning(
            "%s; waiting for the autoscaler to add nodes (%s is set)", message, AUTOSCALING_ENV
        )
        return
    raise RuntimeError(message + (f"; {hint}" if hint else ""))
