"""A sweep's variants as the trials of one Ray Tune experiment (:func:`run_on_tune`).

Ray Train V2 runs inside Tune the way its docs describe ("Hyperparameter Tuning with Ray Tune"):
a Tune *function* trainable (:func:`train_variant`) launches the variant's ``TorchTrainer``
(:func:`spladeray.train.trainer.run_train`) and reports the run's last metrics with
``tune.report``. The trial itself only waits: it reserves no CPU (:data:`TRIAL_RESOURCES`), the
trainer's workers take the cluster's. ``param_space`` is a grid over the variant names; each trial
looks its variant's already-validated ``Config`` up by name.

- Prepared data: every distinct ``prepare.output_dir`` that a variant trains on is prepared in
  the driver before Tune starts (a no-op when up to date), so two trials never write the same
  folder; trials then train with ``prepare=False``. Two variants that prepare one folder with
  different ``prepare:`` settings are refused (each would overwrite the other's data).
- Tune's own experiment folder is ``<train.output_dir>/<sweep>/tune`` (one sub-folder per
  variant); a re-run of the sweep starts a new experiment there, and the variants' Train runs
  (stable names) resume.
- The console: Tune's status tables only with ``--verbose`` / ``SPLADERAY_LOG=debug``
  (:func:`tune_console`, ``RunConfig(verbose=0)`` otherwise); :class:`SweepProgress` prints
  one line per trial start, retry, end and failure (:func:`spladeray.console.sweep_trial`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any

from ray import tune

from spladeray import console, storage
from spladeray.config import ConfigError

logger = logging.getLogger(__name__)

TRIAL_RESOURCES = {"cpu": 0, "memory": 1024 * 1024}
"""What one trial's own actor reserves: no CPU (the TorchTrainer's workers need them); Tune
refuses an all-zero request, so a token MiB of memory."""
TUNE_DIR = "tune"
QUIET_TUNE_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_PRINT_ALL_TRIAL_ERRORS": "0"}
"""Tune's settings for a quiet console, read when the experiment starts: the classic output
engine (which ``verbose=0`` silences; the new one prints its tables and every trial's error at
any verbosity), and no error log of a trial attempt (the sweep reports a failed variant)."""


def train_variant(config: dict, *, configs: dict) -> None:
    """The Tune trial: train the variant ``config["variant"]`` and report its run's last metrics."""
    from spladeray.train.trainer import run_train

    result = run_train(configs[config["variant"]], prepare=False, export=False)
    for thread in threading.enumerate():  # curves.png: done before Tune ends this actor
        if thread.name == "spladeray-curves":
            thread.join()
    reported = {
        k: v
        for k, v in result.metrics.items()
        if (k.startswith("eval/") or k in ("step", "steps_per_s")) and isinstance(v, int | float)
    }
    tune.report({**reported, "seconds": result.seconds})


def prepare_once(variants) -> None:
    """Prepare each distinct data folder the variants train on, once, before any trial runs."""
    from spladeray.data.pipeline import run_prepare
    from spladeray.train.trainer import prepares_train_data

    seen: dict[str, tuple[str, Any]] = {}
    for name, _, cfg in variants:
        if not prepares_train_data(cfg):
            continue
        folder = str(cfg.prepare.output_dir).rstrip("/")
        if folder in seen and seen[folder][1] != cfg.prepare:
            raise ConfigError(
                f"variants {seen[folder][0]} and {name} prepare {folder} with different prepare "
                "settings; give one of them its own prepare.output_dir and train.data_dir"
            )
        seen.setdefault(folder, (name, cfg.prepare))
    for folder, (name, prepare) in seen.items():
        logger.info("sweep: preparing %s (variant %s and those sharing it)", folder, name)
        run_prepare(prepare, ray_config=variants[0][2].ray)


class SweepProgress(tune.Callback):
    """Runs in the driver: turns trial events into the console's sweep lines."""

    def __init__(self, runs: dict[str, str]) -> None:
        self.runs = runs  # variant -> run name

    def _say(self, trial, state: str) -> None:
        console.sweep_trial(self.runs[trial.config["variant"]], state)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._say(trial, "started")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._say(trial, "retrying")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._say(trial, "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._say(trial, "failed")


@contextlib.contextmanager
def tune_console(loud: bool):
    """While Tune runs: its own output as it comes (``loud``), else :data:`QUIET_TUNE_ENV` and
    no "Trials did not complete" error from ``ray.tune.tune`` (the rows say which failed)."""
    if loud:
        yield
        return
    saved = {key: os.environ.get(key) for key in QUIET_TUNE_ENV}
    tune_logger = logging.getLogger("ray.tune.tune")
    level = tune_logger.level
    os.environ.update(QUIET_TUNE_ENV)
    tune_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        tune_logger.setLevel(level)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def error_text(error: BaseException) -> str:
    """The last line that says what went wrong (Tune wraps the trial's traceback)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def run_on_tune(variants, sweep: str, *, concurrency: int, max_failures: int) -> list:
    """Train the variants as Tune trials, ``concurrency`` at a time, each retried up to
    ``max_failures`` times; the rows come back in the variants' order, a failed one with its
    error."""
    from spladeray.raycluster import ensure_ray
    from spladeray.train.sweep import SweepRow, row_of, sweep_dir

    ensure_ray(variants[0][2].ray)
    prepare_once(variants)
    names = [name for name, _, _ in variants]
    runs = {name: cfg.train.name for name, _, cfg in variants}
    loud = console.verbose()
    trainable = tune.with_resources(
        tune.with_parameters(train_variant, configs={n: c for n, _, c in variants}),
        TRIAL_RESOURCES,
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"variant": tune.grid_search(names)},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrency,
            trial_name_creator=lambda trial: trial.config["variant"],
            trial_dirname_creator=lambda trial: trial.config["variant"],
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            **storage.run_config_storage(sweep_dir(variants, sweep)),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            verbose=None if loud else 0,
            callbacks=[SweepProgress(runs)],
        ),
    )
    console.sweep_begin([runs[n] for n in names], names)
    try:
        with tune_console(loud):
            grid = tuner.fit()
    finally:
        console.sweep_done()
    results = {result.config["variant"]: result for result in grid}
    rows = []
    for name, overrides, _ in variants:
        result = results.get(name)
        if result is None or result.error is not None:
            error = error_text(result.error) if result is not None else "the trial never ran"
            rows.append(SweepRow(name, list(overrides), {}, 0, None, 0.0, error=error))
        else:
            metrics = result.metrics or {}
            rows.append(row_of(name, overrides, metrics, metrics.get("seconds", 0.0)))
    return rows
