"""The per-worker training loop (``train_loop_per_worker`` of the TorchTrainer), top to bottom.

One optimizer step = ``grad_accum_steps`` micro-batches of ``batch_size`` queries per worker. For
each micro-batch: encode queries and documents (positives, then hard negatives) in one DDP
forward, compute the configured losses and the sparsity regulariser with its quadratic warmup,
backward. Then clip, step, schedule; every ``log_every_steps`` report metrics, every
``checkpoint.every_steps`` (and at the end) report a checkpoint. The loop does not know which
model or loss it trains: both come from the config.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spladeray.train.checkpoint import (
    MODEL_DIR,
    TrainState,
    load_checkpoint,
    save_checkpoint,
)
from spladeray.train.losses import FlopsRegularizer, SparseBatch, build_loss
from spladeray.train.metrics import MetricsWriter, active_dims
from spladeray.train.schedules import lr_multiplier, quadratic_warmup

logger = logging.getLogger(__name__)

BASELINES_FILE = "baselines.json"  # BM25 and start-of-run evaluation, for resumed runs


class InjectedFailure(RuntimeError):
    """Raised by the test-only ``train.debug.fail_at_step`` hook."""


class PairEncoder(nn.Module):
    """Queries and documents through one encoder in a single forward (one DDP call per step)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(
        self, query: dict[str, torch.Tensor], document: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.encoder.encode_tensors(query, "query")
        d = self.encoder.encode_tensors(document, "document")
        return q, d


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_context(device: torch.device, precision: str):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to_device(features: dict[str, torch.Tensor], device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in features.items()}


def _maybe_fail(debug, step: int, rank: int, marker_root: Path) -> None:
    if debug.fail_at_step != step or debug.fail_rank != rank:
        return
    marker_root.mkdir(parents=True, exist_ok=True)
    fired = sorted(marker_root.glob("failure_*"))
    if len(fired) >= debug.fail_times:
        return
    (marker_root / f"failure_{len(fired)}").write_text(f"step {step} rank {rank}\n")
    raise InjectedFailure(f"injected failure at step {step} on rank {rank} (train.debug)")


def load_baselines(path: Path, step: int, *, warn: bool = True) -> dict[str, float]:
    """The BM25 / start-of-run metrics a resumed run (now at ``step``) carries into its reports.

    Missing file: a warning and ``{}``, e.g. a multi-node resume whose rank 0 landed on a node
    without the first attempt's ``output_dir``; training goes on, the final table lacks those rows.
    """
    if path.is_file():
        return json.loads(path.read_text())
    if warn:
        logger.warning(
            "resumed at step %d but %s is missing: the final report will not have the BM25 / "
            "start-of-run rows (put train.output_dir on shared storage to keep them)",
            step,
            path,
        )
    return {}


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point run by every Ray Train worker; ``loop_config["config"]`` is the whole Config."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    from spladeray.config import Config
    from spladeray.model.loading import load_encoder

    cfg = Config.model_validate(loop_config["config"])
    tc = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    seed_everything(cfg.seed * 1000 + rank)
    torch.set_num_threads(max(1, int(loop_config.get("threads", 1))))

    # ---------------------------------------------------------------- model
    encoder = load_encoder(
        cfg.model.path,
        pooling=cfg.model.pooling,
        max_query_length=cfg.model.max_query_length,
        max_document_length=cfg.model.max_document_length,
        doc_only=cfg.model.doc_only,
        idf_path=cfg.model.idf_path,
    )
    if tc.gradient_checkpointing and hasattr(encoder.mlm, "gradient_checkpointing_enable"):
        encoder.mlm.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    if tc.train_idf:
        if not encoder.doc_only:
            raise ValueError("train.train_idf needs a doc-only model (model.doc_only / idf.json)")
        encoder.idf_weight.requires_grad_(True)
    encoder.train()
    pair = PairEncoder(encoder).to(device)
    model: nn.Module = pair
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            pair, device_ids=[device.index] if device.type == "cuda" else None
        )

    idf_params = [encoder.idf_weight] if tc.train_idf else []
    decay, no_decay = [], []
    for name, p in encoder.mlm.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    if encoder.head is not None:
        decay.extend(p for p in encoder.head.parameters() if p.requires_grad)
    groups = [
        {"params": decay, "weight_decay": tc.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if idf_params:
        groups.append({"params": idf_params, "weight_decay": 0.0, "lr": tc.idf_lr or tc.lr})
    optimizer = torch.optim.AdamW(groups, lr=tc.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(tc.warmup_steps, tc.max_steps, tc.lr_decay)
    )

    losses = [(lc, build_loss(lc)) for lc in tc.losses]
    regularizer = FlopsRegularizer(tc.regularizer.kind)
    reg_warmup = (
        tc.regularizer.warmup_steps
        if tc.regularizer.warmup_steps is not None
        else tc.max_steps // 3
    )
    teachers = tuple(sorted({lc.teacher for lc in tc.losses if lc.name != "infonce"}))

    # ---------------------------------------------------------------- resume
    state = TrainState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = load_checkpoint(
                Path(ckpt_dir), rank=rank, model=pair, optimizer=optimizer, scheduler=scheduler
            )
        logger.info("rank %d resumed at step %d (epoch %d)", rank, state.step, state.epoch)
        if tc.debug.dump_dir is not None:
            tc.debug.dump_dir.mkdir(parents=True, exist_ok=True)
            torch.save(
                {"step": state.step, "model": {k: v.cpu() for k, v in pair.state_dict().items()}},
                tc.debug.dump_dir / f"resume_step{state.step}_rank{rank}.pt",
            )
    run_name = tc.name or cfg.run_name
    marker_root = tc.debug.marker_dir or (tc.output_dir / run_name / "debug")

    # ---------------------------------------------------------------- data
    from spladeray.train.data import Collator

    collator = Collator(
        tokenizer=encoder.tokenizer,
        num_negatives=tc.num_negatives,
        # train.max_*_length truncate training inputs only; evaluation keeps the model's
        max_query_length=tc.max_query_length or encoder.max_query_length,
        max_document_length=tc.max_document_length or encoder.max_document_length,
        teachers=teachers,
        doc_only=encoder.doc_only,
    )
    shard = ray.train.get_dataset_shard("train")

    writer = MetricsWriter(
        enabled=rank == 0,
        tb_dir=tc.output_dir / run_name / "tensorboard" if tc.tensorboard else None,
        mlflow_cfg=tc.mlflow,
        run_name=run_name,
    )
    autocast = autocast_context(device, tc.precision)
    sums: dict[str, float] = {}
    counts = {"micro": 0, "tokens": 0, "samples": 0}
    last_eval: dict[str, float] = {}
    t_last = time.perf_counter()
    micro_in_step = 0
    timers = {"eval": 0.0, "start": time.perf_counter()}

    def run_eval(prefix: str) -> dict[str, float]:
        from spladeray.train.evaluation import evaluate_sparse

        t0 = time.perf_counter()
        scores = evaluate_sparse(
            encoder, tc.eval.beir_dir, tc.eval.split, corpus_limit=tc.eval.corpus_limit
        )
        timers["eval"] += time.perf_counter() - t0
        logger.info("%s at step %d: %s", prefix, state.step, scores)
        return {f"{prefix}/{k}": v for k, v in scores.items()}

    def add(key: str, value: float) -> None:
        sums[key] = sums.get(key, 0.0) + float(value)

    def report(final: bool) -> None:
        nonlocal t_last
        step = state.step
        now = time.perf_counter()
        keys = sorted(sums)
        vec = torch.tensor(
            [sums[k] for k in keys] + [counts["micro"], counts["tokens"], counts["samples"]],
            dtype=torch.float64,
        )
        if world > 1:
            dist.all_reduce(vec)
        n_micro = max(1.0, float(vec[-3]))
        elapsed = max(now - t_last, 1e-9)
        metrics: dict[str, Any] = {k: float(vec[i]) / n_micro for i, k in enumerate(keys)}
        metrics.update(
            step=step,
            epoch=state.epoch,
            lr=scheduler.get_last_lr()[0],
            tokens_per_s=float(vec[-2]) / elapsed,
            samples_per_s=float(vec[-1]) / elapsed,
            steps_per_s=n_micro / world / tc.grad_accum_steps / elapsed,
            world_size=world,
            # wall time of this attempt's training, evaluation excluded
            train_seconds=now - timers["start"] - timers["eval"],
        )
        metrics["lambda/query"] = (
            0.0
            if encoder.doc_only
            else quadratic_warmup(tc.regularizer.query_lambda, step, reg_warmup)
        )
        metrics["lambda/document"] = quadratic_warmup(
            tc.regularizer.document_lambda, step, reg_warmup
        )
        if device.type == "cuda":
            metrics["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        want_eval = tc.eval is not None and (
            final or (tc.eval.every_steps and step % tc.eval.every_steps == 0)
        )
        if want_eval and rank == 0:
            last_eval.update(run_eval("eval"))
        metrics.update(last_eval)
        writer.write(metrics, step)

        want_ckpt = final or step % tc.checkpoint.every_steps == 0
        if want_ckpt:
            with tempfile.TemporaryDirectory(prefix="spladeray-ckpt-") as tmp:
                tmp_dir = Path(tmp)
                save_checkpoint(
                    tmp_dir,
                    rank=rank,
                    model=pair,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    state=state,
                    world_size=world,
                )
                if final and rank == 0:
                    encoder.save_pretrained(str(tmp_dir / MODEL_DIR))
                ray.train.report(
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(tmp),
                    checkpoint_dir_name=f"checkpoint_{step:07d}",
                )
        else:
            ray.train.report(metrics)
        sums.clear()
        counts.update(micro=0, tokens=0, samples=0)
        t_last = time.perf_counter()

    # ---------------------------------------------------------------- baselines
    # Measured once at step 0 and kept beside the checkpoints, so a resumed run's final
    # report (and the comparison table jobs/train.py prints) still has the BM25 and start rows.
    baselines_file = tc.output_dir / run_name / BASELINES_FILE
    wants_baselines = tc.eval is not None and (tc.eval.at_start or tc.eval.bm25)
    if wants_baselines and state.step > 0:
        last_eval.update(load_baselines(baselines_file, state.step, warn=rank == 0))
    elif wants_baselines:
        start: dict[str, Any] = {"step": 0}
        if rank == 0:
            if tc.eval.bm25:
                from spladeray.train.evaluation import evaluate_bm25

                scores = evaluate_bm25(tc.eval.beir_dir, tc.eval.split, tc.eval.corpus_limit)
                logger.info("bm25: %s", scores)
                start.update({f"bm25/{k}": v for k, v in scores.items()})
            if tc.eval.at_start:
                start.update(run_eval("eval_start"))
            writer.write(start, 0)
            baselines_file.parent.mkdir(parents=True, exist_ok=True)
            baselines_file.write_text(
                json.dumps({k: v for k, v in start.items() if k != "step"}, indent=2)
            )
        last_eval.update({k: v for k, v in start.items() if k != "step"})
        ray.train.report(start)  # a barrier: the other ranks wait here, not inside DDP
        t_last = time.perf_counter()
        timers.update(eval=0.0, start=t_last)

    # ---------------------------------------------------------------- train
    resumed_done = state.step >= tc.max_steps
    model.train()
    optimizer.zero_grad(set_to_none=True)
    while state.step < tc.max_steps:
        batches = shard.iter_torch_batches(
            batch_size=tc.batch_size,
            collate_fn=collator,
            drop_last=True,
            local_shuffle_buffer_size=max(tc.shuffle_buffer, tc.batch_size)
            if tc.shuffle_buffer
            else None,
            local_shuffle_seed=(cfg.seed * 1_000_003 + state.epoch * 1009 + rank)
            if tc.shuffle_buffer
            else None,
            prefetch_batches=2,
        )
        seen = 0
        for index, batch in enumerate(batches):
            seen += 1
            if index < state.batch_in_epoch:
                continue  # consumed before the checkpoint this run resumed from
            query = _to_device(batch["query"], device)
            document = _to_device(batch["document"], device)
            b = query["input_ids"].shape[0]
            last_micro = micro_in_step + 1 == tc.grad_accum_steps
            sync = contextlib.nullcontext() if last_micro or world == 1 else model.no_sync()
            with sync:
                with autocast:
                    q, d = model(query, document)
                q, d = q.float(), d.float()
                n = tc.num_negatives
                sb = SparseBatch(
                    queries=q,
                    positives=d[:b],
                    negatives=d[b:].view(b, n, -1),
                    teacher={t: batch[f"teacher_{t}"].to(device) for t in teachers},
                    query_idf=encoder.idf_weight if encoder.doc_only else None,
                )
                total = torch.zeros((), device=device)
                for lc, fn in losses:
                    value = fn(sb)
                    add(f"loss/{lc.name}", value.detach())
                    total = total + lc.weight * value
                lam_d = quadratic_warmup(tc.regularizer.document_lambda, state.step, reg_warmup)
                idf = encoder.idf_weight if encoder.doc_only and tc.regularizer.idf_aware else None
                reg_d = regularizer(d, idf=idf)
                total = total + lam_d * reg_d
                add(f"{tc.regularizer.kind}/document", reg_d.detach())
                if not encoder.doc_only:
                    lam_q = quadratic_warmup(tc.regularizer.query_lambda, state.step, reg_warmup)
                    reg_q = regularizer(q)
                    total = total + lam_q * reg_q
                    add(f"{tc.regularizer.kind}/query", reg_q.detach())
                add("loss", total.detach())
                (total / tc.grad_accum_steps).backward()
            add("active_dims/query", active_dims(q))
            add("active_dims/document", active_dims(d))
            counts["micro"] += 1
            counts["samples"] += b
            counts["tokens"] += int(
                query["attention_mask"].sum() + document["attention_mask"].sum()
            )
            state.batch_in_epoch = index + 1
            micro_in_step += 1
            if not last_micro:
                continue

            # one optimizer step
            micro_in_step = 0
            if tc.max_grad_norm is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(pair.parameters(), tc.max_grad_norm)
                add("grad_norm", float(grad_norm) * tc.grad_accum_steps)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            final = state.step >= tc.max_steps
            if (
                final
                or state.step % tc.log_every_steps == 0
                or state.step % tc.checkpoint.every_steps == 0
            ):
                report(final)
            _maybe_fail(tc.debug, state.step, rank, marker_root)
            if final:
                break
        else:
            if seen == 0:
                raise RuntimeError(
                    f"rank {rank}: the training data gave no full batch of {tc.batch_size}; "
                    "lower train.batch_size or prepare more data"
                )
            state.epoch += 1
            state.batch_in_epoch = 0
    if resumed_done:
        ray.train.report({"step": state.step, "epoch": state.epoch, "already_done": 1})
    writer.close()
    if rank == 0:
        logger.info("training finished at step %d (pid %d)", state.step, os.getpid())
