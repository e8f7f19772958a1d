"""What a worker says about its run: metrics reduced across ranks, evaluation, checkpoints.

The step adds detached device tensors (:meth:`Reporter.add`, :meth:`Reporter.add_batch`); nothing
leaves the device until :meth:`Reporter.report`, which stacks the sums into one tensor **on the
training device**, all-reduces it whenever a process group exists (also at world size 1, so one GPU
runs the same code as eight; NCCL reduces only CUDA tensors) and converts it once. Then rank 0
evaluates when due, writes TensorBoard / MLflow and the run's ``metrics.jsonl``
(:mod:`spladeray.train.curves`), posts its progress line to the driver's console
(:mod:`spladeray.console`), and every rank calls ``ray.train.report``, with a checkpoint every
``checkpoint.every_steps`` and at the end.

The BM25 and start-of-run evaluations (:meth:`Reporter.baselines`) are measured once at step 0 and
kept in ``<train.storage_path>/<run name>/baselines.json`` (:func:`baselines_uri`, next to the
checkpoints, a path or URI), so a resumed run's final report (and the comparison table
jobs/train.py prints) still has them wherever it resumes.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from spladeray import console, storage
from spladeray.train.checkpoint import MODEL_DIR, TrainState, save_checkpoint
from spladeray.train.curves import CurveLog
from spladeray.train.metrics import MetricsWriter, active_dims

logger = logging.getLogger(__name__)

BASELINES_FILE = "baselines.json"  # BM25 and start-of-run evaluation, for resumed runs


def baselines_uri(train_cfg, run_name: str) -> str:
    """``<checkpoint_root>/<run>/baselines.json``: next to the run's checkpoints, so a resume on
    any node (``train.storage_path`` on shared storage or ``s3://``) finds it."""
    return storage.join(train_cfg.checkpoint_root, run_name, BASELINES_FILE)


def load_baselines(uri: str | Path, step: int, *, warn: bool = True) -> dict[str, float]:
    """The BM25 / start-of-run metrics a resumed run (now at ``step``) carries into its reports.

    Missing file: a warning and ``{}``, e.g. a resume whose ``train.storage_path`` is a local
    directory that this node does not have; training goes on, the final table lacks those rows.
    """
    if storage.exists(uri):
        return storage.read_json(uri)
    if warn:
        logger.warning(
            "resumed at step %d but %s is missing: the final report will not have the BM25 / "
            "start-of-run rows (put train.storage_path on shared storage to keep them)",
            step,
            uri,
        )
    return {}


class Reporter:
    """Accumulates one report interval's metrics on the device; reduces, evaluates, reports and
    checkpoints (see the module docstring)."""

    def __init__(
        self,
        train_cfg,
        *,
        run_name: str,
        state: TrainState,
        rank: int,
        world: int,
        device: torch.device,
        encoder,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        objective,
    ) -> None:
        self.tc = train_cfg
        self.state = state
        self.rank, self.world, self.device = rank, world, device
        self.encoder, self.model = encoder, model
        self.optimizer, self.scheduler, self.objective = optimizer, scheduler, objective
        self.run_name = run_name
        self.run_dir = storage.join(train_cfg.output_dir, run_name)
        self.writer = MetricsWriter(
            enabled=rank == 0,
            tb_dir=storage.join(self.run_dir, "tensorboard") if train_cfg.tensorboard else None,
            mlflow_cfg=train_cfg.mlflow,
            run_name=run_name,
            params={
                "train": train_cfg.model_dump(mode="json", exclude={"debug"}),
                "model": encoder.config_dict(),
                "world_size": world,
            },
        )
        self.last_eval: dict[str, float] = {}
        self.curves = CurveLog(self.run_dir, state.step) if rank == 0 else None
        self._reset()
        self._restart_clock()

    # ------------------------------------------------------------------ accumulate (no host sync)
    def _reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.tokens = torch.zeros((), dtype=torch.float64, device=self.device)
        self.micro_batches = 0
        self.samples = 0

    def _restart_clock(self) -> None:
        self.t_last = self.t_start = time.perf_counter()
        self.start_step = self.state.step  # the console's ETA: steps since this clock started
        self.eval_seconds = 0.0

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        """Sum detached scalar tensors by name (averaged per micro-batch at report time)."""
        for key, value in terms.items():
            value = value.detach().to(torch.float64)
            self.sums[key] = self.sums[key] + value if key in self.sums else value

    def add_batch(
        self, queries: torch.Tensor, documents: torch.Tensor, query_mask, document_mask
    ) -> None:
        """One micro-batch's sparsity and throughput counts."""
        self.add(
            {
                "active_dims/query": active_dims(queries),
                "active_dims/document": active_dims(documents),
            }
        )
        self.tokens += query_mask.sum() + document_mask.sum()
        self.micro_batches += 1
        self.samples += queries.shape[0]

    def due(self, step: int) -> bool:
        final = step >= self.tc.max_steps
        return final or step % self.tc.log_every_steps == 0 or self._checkpoint_due(step)

    def _checkpoint_due(self, step: int) -> bool:
        return step >= self.tc.max_steps or step % self.tc.checkpoint.every_steps == 0

    # ------------------------------------------------------------------ reduce, evaluate, report
    def reduce(self) -> dict[str, float]:
        """Sums over ranks, one tensor on the training device, one collective, one host copy."""
        keys = sorted(self.sums)
        counts = torch.tensor(
            [self.micro_batches, self.samples], dtype=torch.float64, device=self.device
        )
        vec = torch.cat([torch.stack([self.sums[k] for k in keys] + [self.tokens]), counts])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(vec)
        values = vec.tolist()
        totals = dict(zip(keys, values[: len(keys)], strict=True))
        totals.update(tokens=values[-3], micro_batches=values[-2], samples=values[-1])
        return totals

    def evaluate(self, prefix: str) -> dict[str, float]:
        """Exact retrieval on ``train.eval`` (rank 0); metrics named ``<prefix>/<measure>``."""
        from spladeray.train.evaluation import evaluate_sparse

        ev = self.tc.eval
        t0 = time.perf_counter()
        step = self.state.step
        console.post({"kind": "eval", "state": "start", "step": step, "docs": ev.corpus_limit})
        self.encoder.progress = console.throttled_eval_progress(step)
        try:
            scores = evaluate_sparse(
                self.encoder,
                ev.beir_dir,
                ev.split,
                corpus_limit=ev.corpus_limit,
                holdout=ev.holdout,
            )
        finally:
            self.encoder.progress = None
        self.eval_seconds += time.perf_counter() - t0
        logger.info("%s at step %d: %s", prefix, step, scores)
        shown = {"nDCG@10": scores.get("nDCG@10"), "doc dims": scores.get("doc_active_dims")}
        console.post(
            {
                "kind": "eval",
                "state": "done",
                "step": step,
                "metrics": {k: v for k, v in shown.items() if v is not None},
                "seconds": time.perf_counter() - t0,
            }
        )
        return {f"{prefix}/{k}": v for k, v in scores.items()}

    def baselines(self) -> None:
        """BM25 and start-of-run evaluation at step 0 (rank 0), or their file after a resume."""
        ev = self.tc.eval
        if ev is None or not (ev.at_start or ev.bm25):
            return
        path = baselines_uri(self.tc, self.run_name)
        if self.state.step > 0:
            self.last_eval.update(load_baselines(path, self.state.step, warn=self.rank == 0))
            return
        start: dict[str, Any] = {}
        if self.rank == 0:
            if ev.bm25:
                from spladeray.train.evaluation import evaluate_bm25

                scores = evaluate_bm25(ev.beir_dir, ev.split, ev.corpus_limit, ev.holdout)
                logger.info("bm25: %s", scores)
                start.update({f"bm25/{k}": v for k, v in scores.items()})
            if ev.at_start:
                start.update(self.evaluate("eval_start"))
            self.writer.write(start, 0)
            storage.write_json(path, start)
            self.curves.add({"step": 0, **start})
        self.last_eval.update(start)
        import ray.train

        ray.train.report({"step": 0, **start})  # a barrier: the other ranks wait here, not in DDP
        self._restart_clock()

    def report(self) -> None:
        """Metrics of the interval since the last report; a checkpoint when due."""
        import ray.train

        step, tc = self.state.step, self.tc
        final = step >= tc.max_steps
        now = time.perf_counter()
        totals = self.reduce()
        n_micro = max(1.0, totals.pop("micro_batches"))
        tokens, samples = totals.pop("tokens"), totals.pop("samples")
        elapsed = max(now - self.t_last, 1e-9)
        metrics: dict[str, Any] = {k: v / n_micro for k, v in totals.items()}
        metrics.update(
            step=step,
            epoch=self.state.epoch,
            lr=self.scheduler.get_last_lr()[0],
            tokens_per_s=tokens / elapsed,
            samples_per_s=samples / elapsed,
            steps_per_s=n_micro / self.world / tc.grad_accum_steps / elapsed,
            world_size=self.world,
            resumes=self.state.resumes,
            nonfinite_steps=self.state.nonfinite_steps,  # skipped for a NaN/inf loss, in all
            # wall time of this attempt's training, evaluation excluded
            train_seconds=now - self.t_start - self.eval_seconds,
            **self.objective.lambdas(step),
        )
        if self.device.type == "cuda":
            metrics["gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        eval_due = tc.eval is not None and (
            final or (tc.eval.every_steps and step % tc.eval.every_steps == 0)
        )
        if eval_due and self.rank == 0:
            self.last_eval.update(self.evaluate("eval"))
        metrics.update(self.last_eval)
        self.writer.write(metrics, step)
        if self.rank == 0:
            console.post(self._progress_event(metrics, now, eval_due))
            # eval/* only at the steps that evaluated (the report carries the last ones on)
            self.curves.add(
                metrics if eval_due else {k: v for k, v in metrics.items() if "eval/" not in k}
            )
            if self._checkpoint_due(step):
                self.curves.save()  # the driver draws curves.png from it after the run
        if self._checkpoint_due(step):
            self._report_checkpoint(metrics, final)
        else:
            ray.train.report(metrics)
        self._reset()
        self.t_last = time.perf_counter()

    def _progress_event(self, metrics: dict[str, Any], now: float, evaluated: bool) -> dict:
        """What the driver's console shows of this report (:func:`spladeray.console.train_line`)."""
        event = {
            "kind": "train",
            "run": self.run_name,  # a sweep's trials run side by side (console.sweep_begin)
            "step": self.state.step,
            "max_steps": self.tc.max_steps,
            "start_step": self.start_step,
            "elapsed": now - self.t_start,
            "samples_per_s": metrics["samples_per_s"],
        }
        for key, name in (
            ("loss", "loss"),
            ("active_dims/query", "query_dims"),
            ("active_dims/document", "document_dims"),
        ):
            if key in metrics:
                event[name] = metrics[key]
        if evaluated and "eval/nDCG@10" in metrics:
            event["nDCG@10"] = metrics["eval/nDCG@10"]
        return event

    def _report_checkpoint(self, metrics: dict[str, Any], final: bool) -> None:
        import ray.train

        with tempfile.TemporaryDirectory(prefix="spladeray-ckpt-") as tmp:
            save_checkpoint(
                Path(tmp),
                rank=self.rank,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                state=self.state,
                world_size=self.world,
                device=self.device,
            )
            if self.rank == 0 and (final or self.tc.checkpoint.save_model):
                self.encoder.save_pretrained(str(Path(tmp) / MODEL_DIR))
            if final and self.rank == 0:
                self.writer.log_model(Path(tmp) / MODEL_DIR)
            self.writer.sync()  # event files reach a remote output_dir at every checkpoint
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=f"checkpoint_{self.state.step:07d}",
            )

    def close(self) -> None:
        self.writer.close()
