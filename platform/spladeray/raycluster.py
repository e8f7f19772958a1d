"""Connecting to Ray: the one place every stage starts or joins a cluster."""

from __future__ import annotations

import os


def ensure_ray(ray_cfg=None, *, log_to_driver: bool = True) -> None:
    """Join the cluster a :class:`spladeray.config.RayConfig` names, or start a local one.

    Does nothing when Ray is already up (tests, a caller that initialised it). Joining an existing
    cluster (``ray.address`` set, or ``RAY_ADDRESS`` under ``ray job submit``) declares no
    resources: ``num_cpus`` / ``num_gpus`` / dashboard apply only to a cluster we start.
    """
    import ray

    if ray.is_initialized():
        return
    address = ray_cfg.address if ray_cfg is not None else None
    joining = address not in (None, "local") or (
        address is None and bool(os.environ.get("RAY_ADDRESS"))
    )
    kwargs = {"address": address, "log_to_driver": log_to_driver}
    if ray_cfg is not None and not joining:
        kwargs.update(
            num_cpus=ray_cfg.num_cpus,
            num_gpus=ray_cfg.num_gpus,
            include_dashboard=ray_cfg.include_dashboard,
        )
    ray.init(**kwargs)
