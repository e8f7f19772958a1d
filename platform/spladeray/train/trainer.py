"""The TorchTrainer factory and the driver side of a training run.

``run_train(cfg)`` opens the prepared data, builds a :class:`ray.train.torch.TorchTrainer`
from ``cfg.train`` and fits it. Ray Train V2 resumes by run identity: re-running with the same
``storage_path`` and ``name`` restores the latest checkpoint of that run and continues to
``max_steps``; ``max_failures`` restarts a failed worker group from the latest checkpoint.
With ``min_workers`` the run is elastic (``ScalingConfig(num_workers=(min, max))``): after a node
loss it restarts with as many workers as fit, at least ``min_workers``, and the data position is
rescaled to the new world size (:func:`spladeray.train.checkpoint.rescale_position`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spladeray import console, storage
from spladeray.raycluster import ensure_ray
from spladeray.train.curves import draw_run_curves_in_background

logger = logging.getLogger(__name__)


def storage_path(cfg) -> str:
    """``train.storage_path`` (a local path or ``s3://`` URI), else ``<output_dir>/ray``."""
    return cfg.train.checkpoint_root


def run_name(cfg) -> str:
    """The Ray Train run name (``train.name``, else ``run_name``): checkpoints, TensorBoard and
    the exported model live under it. Derived here once; workers receive it."""
    return cfg.train.name or cfg.run_name


def build_trainer(cfg, *, callbacks: list | None = None, datasets: dict | None = None):
    """A ``TorchTrainer`` for ``cfg`` (``cfg.train`` must be set)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from spladeray.train.data import open_prepared
    from spladeray.train.loop import train_loop_per_worker
    from spladeray.train.metrics import ProgressCallback

    tc = cfg.train
    if tc is None:
        raise ValueError("the config has no train: section")
    if datasets is None:
        datasets = {
            "train": open_prepared(
                tc.data_dir, list(tc.teachers), mask_ids=tc.mask_in_batch_positives
            )
        }
    backend = tc.backend if tc.backend != "auto" else ("nccl" if tc.use_gpu else "gloo")
    resources: dict[str, float] = {"CPU": tc.cpus_per_worker}
    if tc.use_gpu:
        resources["GPU"] = 1
    ingest = DataConfig.default_ingest_options()
    ingest.preserve_order = True  # deterministic shards, so a resume can skip consumed batches
    ckpt = tc.checkpoint
    return TorchTrainer(
        train_loop_per_worker,
        # the typed Config crosses to the workers as is (pydantic models pickle)
        train_loop_config={
            "cfg": cfg,
            "run_name": run_name(cfg),
            "threads": max(1, int(tc.cpus_per_worker)),
        },
        torch_config=TorchConfig(backend=backend),
        scaling_config=ScalingConfig(
            num_workers=tc.workers,
            use_gpu=tc.use_gpu,
            resources_per_worker=resources,
            elastic_resize_monitor_interval_s=tc.elastic_resize_interval_s,
        ),
        run_config=RunConfig(
            name=run_name(cfg),
            **storage.run_config_storage(storage_path(cfg)),
            failure_config=FailureConfig(max_failures=tc.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=ckpt.num_to_keep,
                checkpoint_score_attribute=ckpt.score_attribute,
                checkpoint_score_order=ckpt.score_order,
            ),
            callbacks=[ProgressCallback(tc.max_steps), *(callbacks or [])],
        ),
        datasets=datasets,
        dataset_config=DataConfig(execution_options=ingest),
    )


@dataclass
class TrainResult:
    """What a finished run left behind."""

    metrics: dict[str, Any]  # the last report: step, loss terms, eval/*, bm25/*, train_seconds...
    checkpoint_path: str | None
    model_dir: str | None  # <output_dir>/<name>/model (a path or URI), the exported final model
    seconds: float  # wall time of the fit, evaluation included
    ray_result: Any


def prepares_train_data(cfg) -> bool:
    """Whether the config's ``prepare:`` section writes what ``train.data_dir`` reads."""
    return (
        cfg.prepare is not None
        and cfg.train is not None
        and str(cfg.prepare.output_dir).rstrip("/") == str(cfg.train.data_dir).rstrip("/")
    )


def input_uris(cfg, *, prepare: bool = False) -> list[str]:
    """Every file or directory a training run will read, for :func:`check_inputs`: the prepared
    data (unless this run prepares it), the model when it is a local path or a URI (a hub id is
    fetched by the loader), the IDF table, and each file of the evaluation BEIR directory (read
    by rank 0 at the first evaluation, possibly thousands of steps in)."""
    tc = cfg.train
    uris: list[str] = []
    if not (prepare and prepares_train_data(cfg)):
        uris.append(str(tc.data_dir))
    model = str(cfg.model.path)
    if storage.is_remote(model) or model.startswith(("/", ".", "~")):
        uris.append(model)
    if cfg.model.idf_path is not None:
        uris.append(str(cfg.model.idf_path))
    if tc.eval is not None:
        beir = tc.eval.beir_dir
        uris += [
            storage.join(beir, "corpus.jsonl"),
            storage.join(beir, "queries.jsonl"),
            storage.join(beir, "qrels", f"{tc.eval.split}.tsv"),
        ]
    return uris


def check_inputs(cfg, *, prepare: bool = False) -> None:
    """Before step 0, every input the run will read exists and can be read, and its output can
    be written; one :class:`spladeray.storage.StorageError` names every problem. (An evaluation
    directory that is missing on the cluster would otherwise fail rank 0 at the first
    evaluation, before that step's checkpoint, and restart the run until ``max_failures``.)"""
    storage.preflight(read=input_uris(cfg, prepare=prepare), write=[storage_path(cfg)])


def check_trainer_capacity(cfg) -> None:
    """Fail now, with the numbers, when the cluster cannot hold the trainer's workers (at least
    ``min_workers`` of an elastic run): Ray Train would otherwise wait for resources that never
    come. A warning instead on an autoscaling cluster (:func:`spladeray.raycluster.check_capacity`)."""
    from spladeray.raycluster import check_capacity

    tc = cfg.train
    workers = tc.min_workers or tc.num_workers
    check_capacity(
        f"train ({workers} worker(s) of {tc.cpus_per_worker:g} CPU"
        f"{' + 1 GPU' if tc.use_gpu else ''})",
        cpus=workers * tc.cpus_per_worker,
        gpus=float(workers) if tc.use_gpu else 0.0,
        hint="lower train.num_workers or train.cpus_per_worker, set train.use_gpu: false, "
        "or add nodes",
    )


def run_train(
    cfg, *, callbacks: list | None = None, export: bool = True, prepare: bool = False
) -> TrainResult:
    """Fit, then copy the final checkpoint's exported model to ``<output_dir>/<name>/model``.

    With ``prepare`` (what ``jobs/train.py`` does unless ``--no-prepare``), a config whose
    ``prepare.output_dir`` is ``train.data_dir`` first runs the prepare stage, which is a no-op
    when its output is complete and up to date (same config hash): so ``python jobs/train.py``
    works on a fresh checkout, and never trains on data prepared with another config.
    """
    # Fail here, naming every missing input, not minutes (or an evaluation) later in a worker.
    # A local data_dir that is missing gets open_prepared's "run jobs/prepare.py first" instead.
    prepared_here = prepare and prepares_train_data(cfg)
    local_data = not storage.is_remote(cfg.train.data_dir)
    if not prepared_here and local_data and not storage.exists(cfg.train.data_dir):
        from spladeray.train.data import open_prepared

        open_prepared(cfg.train.data_dir, list(cfg.train.teachers))  # raises its own message
    check_inputs(cfg, prepare=prepare)
    ensure_ray(cfg.ray)
    check_trainer_capacity(cfg)
    if prepare and prepares_train_data(cfg):
        from spladeray.data.pipeline import run_prepare

        run_prepare(cfg.prepare, ray_config=cfg.ray)
    name = run_name(cfg)
    t0 = time.perf_counter()
    trainer = build_trainer(cfg, callbacks=callbacks)
    result = trainer.fit()
    console.flush()  # rank 0's last progress line before the caller's result line
    seconds = time.perf_counter() - t0
    draw_run_curves_in_background(storage.join(cfg.train.output_dir, name))
    model_dir = None
    ckpt_path = result.checkpoint.path if result.checkpoint is not None else None
    if export and result.checkpoint is not None:
        from spladeray.train.checkpoint import MODEL_DIR

        with result.checkpoint.as_directory() as d:
            src = Path(d) / MODEL_DIR
            if src.is_dir():
                model_dir = storage.join(cfg.train.output_dir, name, MODEL_DIR)
                if storage.exists(model_dir):
                    storage.delete(model_dir)
                storage.upload(src, model_dir)
    logger.info("training run %s done in %.1fs; model: %s", name, seconds, model_dir)
    return TrainResult(
        metrics=dict(result.metrics or {}),
        checkpoint_path=ckpt_path,
        model_dir=model_dir,
        seconds=seconds,
        ray_result=result,
    )
