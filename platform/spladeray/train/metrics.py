"""Training metrics: sparsity statistics, TensorBoard / MLflow writers (rank 0), driver progress.

Every ``log_every_steps`` all workers call ``ray.train.report`` (the Ray dashboard and the run's
result); rank 0 also writes the same scalars to TensorBoard and, if configured, MLflow: the run's
parameters once (the ``train`` section and the model's settings, flattened to ``train.lr`` ...),
the scalars at every report, and the final model directory as the ``model`` artifact. The
controller-side :class:`ProgressCallback` prints one progress line per report on the driver.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from spladeray.redaction import redact_config

logger = logging.getLogger(__name__)


@torch.no_grad()
def active_dims(vectors: torch.Tensor) -> torch.Tensor:
    """Mean number of non-zero dimensions per vector: a 0-d tensor on the vectors' device (no
    host sync; the reporter converts it with the other metrics)."""
    if not vectors.numel():
        return vectors.new_zeros((), dtype=torch.float32)
    return (vectors > 0).sum(dim=-1).float().mean()


class MetricsWriter:
    """Scalars to TensorBoard, MLflow and Ray's metrics; a no-op on ranks other than 0.

    Ray metrics (``ray.util.metrics`` gauges, exported by every node's metrics agent to Prometheus
    and the dashboard's Metrics view next to Serve's and Ray Data's): one gauge per scalar, named
    ``spladeray_train_<key>`` with ``/``, ``@`` and other non-identifier characters as ``_``
    (``loss/infonce`` -> ``spladeray_train_loss_infonce``, ``step`` -> ``spladeray_train_step``),
    tagged with the run name.
    """

    def __init__(
        self,
        enabled: bool,
        tb_dir: str | Path | None,
        mlflow_cfg=None,
        run_name: str = "",
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self._tb = None
        self._mlflow = None
        self._gauges: dict[str, Any] | None = None
        self.run_name = run_name
        if not enabled:
            return
        import ray

        if ray.is_initialized():
            self._gauges = {}
        self._tb_uri = None
        if tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            from spladeray import storage

            local = Path(str(tb_dir))
            if storage.is_remote(tb_dir):  # written here, uploaded by sync() and close()
                self._tb_uri = str(tb_dir)
                local = Path(tempfile.mkdtemp(prefix="spladeray-tb-"))
            local.mkdir(parents=True, exist_ok=True)
            self._tb = SummaryWriter(log_dir=str(local))
        if mlflow_cfg is not None:
            try:
                import mlflow
            except ImportError:
                logger.warning("train.mlflow is set but mlflow is not installed; skipping it")
            else:
                mlflow.set_tracking_uri(mlflow_cfg.tracking_uri)
                mlflow.set_experiment(mlflow_cfg.experiment)
                if mlflow.active_run() is None:
                    mlflow.start_run(run_name=run_name)
                if params:  # credentials a ${VAR} put into the config never become params
                    mlflow.log_params(flat_params(redact_config(params)))
                self._mlflow = mlflow

    def write(self, metrics: dict[str, Any], step: int) -> None:
        scalars = {
            k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and k != "step"
        }
        if self._gauges is not None:
            self._set_gauges({**scalars, "step": float(step)})
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._mlflow is not None:
            self._mlflow.log_metrics(
                {k.replace("@", "_at_"): v for k, v in scalars.items()}, step=step
            )

    def log_model(self, local_dir: str | Path, artifact_path: str = "model") -> None:
        """The final model directory as an MLflow artifact (rank 0; no-op without MLflow)."""
        if self._mlflow is not None:
            self._mlflow.log_artifacts(str(local_dir), artifact_path=artifact_path)

    def _set_gauges(self, scalars: dict[str, float]) -> None:
        from ray.util.metrics import Gauge

        for key, value in scalars.items():
            name = ray_metric_name(key)
            gauge = self._gauges.get(name)
            if gauge is None:
                gauge = Gauge(name, description=f"spladeray training: {key}", tag_keys=("run",))
                self._gauges[name] = gauge
            gauge.set(value, tags={"run": self.run_name})

    def sync(self) -> None:
        """Flush the event files, and upload them when the TensorBoard dir is a URI."""
        if self._tb is None:
            return
        self._tb.flush()
        if self._tb_uri is not None:
            from spladeray import storage

            storage.upload(self._tb.log_dir, self._tb_uri)

    def close(self) -> None:
        if self._tb is not None:
            self.sync()
            self._tb.close()
        if self._mlflow is not None:
            self._mlflow.end_run()


MLFLOW_PARAM_CHARS = 6000  # the tracking server's limit on a parameter's value


def flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": "0.001"}``; lists as JSON, values cut to
    the tracking server's length limit, ``None`` dropped."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{name}."))
        elif value is not None:
            text = json.dumps(value) if isinstance(value, list | tuple) else str(value)
            out[name] = text[:MLFLOW_PARAM_CHARS]
    return out


def ray_metric_name(key: str) -> str:
    """``loss/infonce`` -> ``spladeray_train_loss_infonce`` (Prometheus identifier characters)."""
    return "spladeray_train_" + re.sub(r"[^A-Za-z0-9_]+", "_", key.replace("@", "_at_")).strip("_")


def format_progress(m: dict[str, Any], max_steps: int) -> str:
    parts = [f"step {int(m.get('step', 0))}/{max_steps}"]
    for key, fmt in (
        ("loss", "loss {:.4f}"),
        ("lr", "lr {:.2e}"),
        ("active_dims/query", "q-dims {:.0f}"),
        ("active_dims/document", "d-dims {:.0f}"),
        ("samples_per_s", "{:.1f} samples/s"),
        ("eval/nDCG@10", "nDCG@10 {:.4f}"),
    ):
        if key in m:
            parts.append(fmt.format(m[key]))
    if m.get("resumes"):
        parts.append(f"resumes {int(m['resumes'])}")
    return "[train] " + " | ".join(parts)


try:
    from ray.train import UserCallback
except ImportError:  # pragma: no cover - very old Ray
    UserCallback = object  # type: ignore[misc,assignment]


class ProgressCallback(UserCallback):  # type: ignore[misc]
    """Runs in the Ray Train controller (on the driver's node): one line per report."""

    def __init__(self, max_steps: int) -> None:
        self.max_steps = max_steps

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if metrics:
            line = format_progress(metrics[0], self.max_steps)
            if checkpoint is not None:
                line += f" | checkpoint {Path(checkpoint.path).name}"
            print(line, flush=True)
