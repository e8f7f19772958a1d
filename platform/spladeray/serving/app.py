"""Build the Serve application from a spladeray config: one deployment, ``Encoder``, that is
both the FastAPI ingress and the batched encoder, with autoscaling on it.

``serve run serve/config.yaml`` calls :func:`app_builder` with the ``args`` of that file
(``config``: a spladeray YAML, relative paths resolved against the project root; ``overrides``:
``dotted.key=value`` strings). Tests and benchmarks call :func:`build_app` with a loaded config.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from spladeray.config import Config, load_config
from spladeray.paths import project_root

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/demo.yaml"


def resolve_config_path(path: str | Path) -> Path:
    """A config path as given, else relative to the project root (replicas' cwd varies)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute() or candidate.is_file():
        return candidate.resolve()
    return (project_root() / candidate).resolve()


def _num_gpus(serve_cfg) -> float:
    """GPUs per encoder replica: as configured, or for ``auto`` one when the cluster has any.

    ``serve run module:app`` builds the app before it starts Ray; then the local cluster it is
    about to start has this machine's GPUs.
    """
    if serve_cfg.num_gpus != "auto":
        return float(serve_cfg.num_gpus)
    import ray

    from spladeray.raycluster import cluster_gpus

    if ray.is_initialized():
        return 1.0 if cluster_gpus() > 0 else 0.0
    import torch

    return 1.0 if torch.cuda.is_available() else 0.0


def _actor_options(serve_cfg) -> dict[str, Any]:
    """The replicas' resources, and ``serve.env_vars`` in their environment: OpenMP and oneDNN
    read theirs once, when torch loads them, so it goes in the runtime_env, not in the replica's
    code."""
    options: dict[str, Any] = {"num_cpus": serve_cfg.num_cpus, "num_gpus": _num_gpus(serve_cfg)}
    if serve_cfg.env_vars:
        options["runtime_env"] = {"env_vars": dict(serve_cfg.env_vars)}
    return options


def build_app(cfg: Config, *, check_model: bool = True, load_gate: str | None = None):
    """The bound application for ``serve.run``.

    With ``check_model`` the model is loaded once here, on the CPU (the driver holds no GPU), so
    a random-head model (or a missing one) fails the deployment at once with a clear message
    instead of in replica restarts.
    ``load_gate`` (drills and tests): replicas load the model only once that file exists.
    """
    from ray.serve.config import BackpressureConfig

    from spladeray.serving.api import EncoderIngress
    from spladeray.serving.encoder import batch_user_config, load_servable_encoder

    if check_model:
        load_servable_encoder(cfg, device="cpu")  # RandomHeadError unless allow_random_head
    s = cfg.serve
    autoscaling = {
        "min_replicas": s.min_replicas,
        "initial_replicas": max(s.min_replicas, 1),
        "max_replicas": s.max_replicas,
        "target_ongoing_requests": s.target_ongoing_requests,
        "upscale_delay_s": s.upscale_delay_s,
        "downscale_delay_s": s.downscale_delay_s,
        "downscale_to_zero_delay_s": s.downscale_to_zero_delay_s,
        "look_back_period_s": s.look_back_period_s,
    }
    if s.metrics_interval_s != 10.0:  # Ray's default; set otherwise, it warns (deprecated)
        autoscaling["metrics_interval_s"] = s.metrics_interval_s
    placement = (
        {"max_replicas_per_node": s.max_replicas_per_node} if s.max_replicas_per_node else {}
    )
    return EncoderIngress.options(
        user_config=batch_user_config(s),
        autoscaling_config=autoscaling,
        max_ongoing_requests=s.max_ongoing_requests,
        max_queued_requests=s.max_queued_requests,
        backpressure_config=BackpressureConfig(retry_after_s=s.retry_after_s),
        ray_actor_options=_actor_options(s),
        graceful_shutdown_timeout_s=s.graceful_shutdown_timeout_s,
        health_check_period_s=s.health_check_period_s,
        logging_config={"enable_access_log": s.access_log},
        **placement,
    ).bind(cfg, load_gate)


def app_builder(args: dict[str, Any] | None = None):
    """Serve application builder (``import_path: serve.app:app``)."""
    args = dict(args or {})
    unknown = set(args) - {"config", "overrides"}
    if unknown:
        raise ValueError(f"unknown application args {sorted(unknown)}; expected config, overrides")
    path = resolve_config_path(args.get("config", DEFAULT_CONFIG))
    overrides = args.get("overrides") or []
    if isinstance(overrides, str):
        overrides = [overrides]
    cfg = load_config(path, list(overrides))
    logger.info("serving %s (model %s, index %s)", path, cfg.model.path, cfg.index.backend)
    return build_app(cfg)
