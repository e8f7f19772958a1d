"""The per-worker training loop (``train_loop_per_worker`` of the TorchTrainer), top to bottom.

Phases: setup (rank, device, seed) -> model, objective, optimizer -> resume -> data -> baselines ->
train. One optimizer step = ``grad_accum_steps`` micro-batches of ``batch_size`` queries per
worker; each encodes queries and documents (positives, then hard negatives) in one DDP forward,
computes :class:`SpladeObjective` and backpropagates. A NaN/inf loss on any rank skips the step
or stops the run (:mod:`spladeray.train.nonfinite`). Then clip, step, schedule, and the
:class:`Reporter` reports (metrics every ``log_every_steps``, a checkpoint every
``checkpoint.every_steps`` and at the end). The loop does not know which model or loss it trains:
both come from the config.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from spladeray import storage
from spladeray.train.checkpoint import TrainState, load_checkpoint, restore_latest_good
from spladeray.train.debug import maybe_fail, maybe_hold, record_collectives
from spladeray.train.nonfinite import any_rank, handle_nonfinite, nonfinite_flag
from spladeray.train.objective import SpladeObjective
from spladeray.train.optim import build_optimizer, build_scheduler
from spladeray.train.reporter import Reporter
from spladeray.train.step import (
    PairEncoder,
    autocast_context,
    find_unused_parameters,
    load_training_encoder,
    seed_everything,
    sparse_batch,
    to_device,
    training_collator,
)

logger = logging.getLogger(__name__)


def train_loop_per_worker(loop_config: dict) -> None:
    """Run by every Ray Train worker. ``loop_config``: ``cfg`` (the typed :class:`Config`),
    ``run_name`` and ``threads`` (torch intra-op threads), from :func:`build_trainer`."""
    import ray.train
    import ray.train.torch

    # ---------------------------------------------------------------- setup
    cfg, run_name = loop_config["cfg"], loop_config["run_name"]
    tc = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    seed_everything(cfg.seed * 1000 + rank)
    torch.set_num_threads(loop_config["threads"])
    if tc.debug.collective_log_dir is not None:
        record_collectives(tc.debug.collective_log_dir, rank, device)

    # ---------------------------------------------------------------- model, objective, optimizer
    encoder = load_training_encoder(cfg)
    pair = PairEncoder(encoder).to(device)
    model: nn.Module = pair
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            pair,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters(encoder, cfg),
        )
    objective = SpladeObjective(tc, doc_only=encoder.doc_only)
    optimizer = build_optimizer(encoder, tc)
    scheduler = build_scheduler(optimizer, tc)

    # ---------------------------------------------------------------- resume
    state = restore(tc, run_name, pair, optimizer, scheduler, rank=rank, world=world, device=device)
    resumed_done = state.step >= tc.max_steps

    # ---------------------------------------------------------------- data
    collator = training_collator(encoder, tc)
    batches = micro_batches(ray.train.get_dataset_shard("train"), collator, cfg, state, rank)

    # ---------------------------------------------------------------- baselines
    reporter = Reporter(
        tc,
        run_name=run_name,
        state=state,
        rank=rank,
        world=world,
        device=device,
        encoder=encoder,
        model=pair,
        optimizer=optimizer,
        scheduler=scheduler,
        objective=objective,
    )
    reporter.baselines()

    # ---------------------------------------------------------------- train
    autocast = autocast_context(device, tc.precision)
    marker_root = tc.debug.marker_dir or storage.join(tc.output_dir, run_name, "debug")
    model.train()
    optimizer.zero_grad(set_to_none=True)
    steps = StepContext(tc, rank, world, device, encoder, objective, autocast)
    while state.step < tc.max_steps:
        nonfinite, seen, query_ids = steps.forward_backward(model, batches, state.step)
        steps.apply_or_skip(pair, optimizer, reporter, state, nonfinite, seen, query_ids)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        if reporter.due(state.step):
            reporter.report()
        maybe_fail(tc.debug, state.step, rank, marker_root)
        maybe_hold(tc.debug, state.step)

    if resumed_done:
        ray.train.report({"step": state.step, "epoch": state.epoch, "already_done": 1})
    reporter.close()
    if rank == 0:
        logger.info("training finished at step %d (pid %d)", state.step, os.getpid())


class StepContext:
    """One optimizer step's two halves, so the loop above reads top to bottom."""

    def __init__(self, tc, rank, world, device, encoder, objective, autocast) -> None:
        self.tc, self.rank, self.world, self.device = tc, rank, world, device
        self.encoder, self.objective, self.autocast = encoder, objective, autocast

    def forward_backward(self, model, batches, step: int):
        """``grad_accum_steps`` micro-batches forward and backward. Returns this rank's
        NaN/inf flag (a device tensor), each micro-batch's (terms, q, d, masks) for the reporter,
        and the step's query ids (for the message if the step is skipped)."""
        tc, device = self.tc, self.device
        nonfinite = torch.zeros((), device=device)
        seen: list = []
        query_ids: list[str] = []
        for micro in range(tc.grad_accum_steps):
            batch = next(batches)
            query_ids.extend(batch_query_ids(batch))
            query = to_device(batch["query"], device)
            document = to_device(batch["document"], device)
            last_micro = micro + 1 == tc.grad_accum_steps
            # DDP all-reduces gradients only on the step's last micro-batch
            sync = contextlib.nullcontext() if last_micro or self.world == 1 else model.no_sync()
            with sync:
                with self.autocast:
                    q, d = model(query, document)
                q, d = q.float(), d.float()
                sb = sparse_batch(q, d, batch, encoder=self.encoder, train_cfg=tc)
                out = self.objective(sb, step)
                total = out.total
                if step + 1 in tc.debug.nan_at_steps and self.rank == tc.debug.fail_rank:
                    total = total * float("nan")  # test-only injection (train.debug)
                nonfinite = torch.maximum(nonfinite, nonfinite_flag(total))
                (total / tc.grad_accum_steps).backward()
            seen.append(
                (
                    out.terms,
                    q.detach(),
                    d.detach(),
                    query["attention_mask"],
                    document["attention_mask"],
                )
            )
        return nonfinite, seen, query_ids

    def apply_or_skip(self, pair, optimizer, reporter, state, nonfinite, seen, query_ids) -> None:
        """Clip, then the optimizer step; or, when any rank's loss or the gradient norm is
        NaN/inf, the same skip (or stop) on every rank (:mod:`spladeray.train.nonfinite`)."""
        tc = self.tc
        grad_norm, bad_norm = None, torch.zeros((), device=self.device)
        if tc.max_grad_norm is not None:  # gradients are all-reduced: the same on every rank
            grad_norm = torch.nn.utils.clip_grad_norm_(pair.parameters(), tc.max_grad_norm)
            bad_norm = nonfinite_flag(grad_norm)
        if any_rank(torch.maximum(nonfinite, bad_norm)):  # one decision for all ranks (DDP)
            handle_nonfinite(
                tc,
                state,
                step=state.step + 1,
                rank=self.rank,
                local=bool(nonfinite.item()),
                query_ids=query_ids,
            )
            return
        for terms, q, d, query_mask, document_mask in seen:
            reporter.add(terms)
            reporter.add_batch(q, d, query_mask, document_mask)
        if grad_norm is not None:
            reporter.add({"grad_norm": grad_norm * tc.grad_accum_steps})
        optimizer.step()


def batch_query_ids(batch: dict) -> list[str]:
    """The micro-batch's query ids (``query_id`` from the collator), else its query positions."""
    if "query_id" in batch:
        return [str(q) for q in batch["query_id"]]
    return [f"#{i}" for i in range(batch["query"]["input_ids"].shape[0])]


def restore(
    tc, run_name: str, pair, optimizer, scheduler, *, rank: int, world: int, device
) -> TrainState:
    """The state of the run's latest checkpoint (model, optimizer, scheduler, RNG restored), or
    of the previous good one when the latest is corrupt (:func:`restore_latest_good`), or a
    fresh :class:`TrainState`."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return TrainState()

    def load(directory: Path) -> TrainState:
        return load_checkpoint(
            directory,
            rank=rank,
            model=pair,
            optimizer=optimizer,
            scheduler=scheduler,
            device=device,
            world_size=world,
        )

    run_dir = storage.join(tc.checkpoint_root, run_name)
    with checkpoint.as_directory() as ckpt_dir:
        state = restore_latest_good(Path(ckpt_dir), Path(checkpoint.path).name, run_dir, load)
    state.resumes += 1
    logger.info(
        "rank %d resumed at step %d (epoch %d, resume %d)",
        rank,
        state.step,
        state.epoch,
        state.resumes,
    )
    if tc.debug.dump_dir is not None:
        tc.debug.dump_dir.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"step": state.step, "model": {k: v.cpu() for k, v in pair.state_dict().items()}},
            tc.debug.dump_dir / f"resume_step{state.step}_rank{rank}.pt",
        )
    return state


def micro_batches(shard, collator, cfg, state: TrainState, rank: int) -> Iterator[dict]:
    """This worker's micro-batches, epoch after epoch, from the data position in ``state``.

    Keeps ``state.epoch`` / ``state.batch_in_epoch`` (micro-batches of the epoch consumed) up to
    date, so a checkpoint records where to continue; after a resume it skips the micro-batches of
    the current epoch that the checkpoint's run already consumed.
    """
    tc = cfg.train
    while True:
        shuffle = tc.shuffle_buffer > 0
        stream = shard.iter_torch_batches(
            batch_size=tc.batch_size,
            collate_fn=collator,
            drop_last=True,
            local_shuffle_buffer_size=max(tc.shuffle_buffer, tc.batch_size) if shuffle else None,
            local_shuffle_seed=(cfg.seed * 1_000_003 + state.epoch * 1009 + rank)
            if shuffle
            else None,
            prefetch_batches=2,
        )
        seen = 0
        for index, batch in enumerate(stream):
            seen += 1
            if index < state.batch_in_epoch:
                continue  # consumed before the checkpoint this run resumed from
            state.batch_in_epoch = index + 1
            yield batch
        if seen == 0:
            raise RuntimeError(
                f"rank {rank}: the training data gave no full batch of {tc.batch_size}; "
                "lower train.batch_size or prepare more data"
            )
        state.epoch += 1
        state.batch_in_epoch = 0
