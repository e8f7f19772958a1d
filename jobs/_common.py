"""What every entry point in jobs/ shares: ``--config`` / ``--set`` parsing and config loading.

A job is ``args = parse_args(__doc__, flags)``, ``cfg = load(args, require="train")``,
``outputs = checked_outputs("train", train_outputs(cfg))`` (refuses, before any work, outputs in a
Ray job's unpacked working dir: docs/cluster.md, "Where outputs go"), one library call, a
printout, and ``print_written("train", outputs)`` as the last line. With no ``--config`` a job runs on :data:`DEFAULT_CONFIG` (CPU, offline, a few
minutes), so ``ray job submit --working-dir . -- python jobs/train.py`` works on a fresh checkout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "configs/demo.yaml"
"""The config a job uses without ``--config``, relative to the checkout root."""

# Entry points run from a checkout without installing too: put platform/ on the path.
sys.path.insert(0, str(ROOT / "platform"))


def parse_args(
    description: str | None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
    *,
    default_config: str = DEFAULT_CONFIG,
    argv: Sequence[str] | None = None,
) -> argparse.Namespace:
    """``--config FILE`` (default ``default_config``), ``--set key=value`` overrides, and any
    job-specific flags ``extra`` adds, and ``--verbose``. Sets up the console
    (:mod:`spladeray.console`: quiet unless ``--verbose`` or ``SPLADERAY_LOG=debug``)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        help=f"YAML config file (see configs/); default: {default_config} (CPU, runs anywhere)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.max_steps=10 (repeatable)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's own logs and progress bars too (as SPLADERAY_LOG=debug)",
    )
    parser.set_defaults(default_config=default_config)
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    from spladeray import console

    console.configure(verbose=console.is_verbose(args.verbose))
    return args


def load(args: argparse.Namespace, require: str | None = None):
    """The config ``args`` name (or the job's default), with the ``--set`` overrides applied.

    Prints which file is used. ``require`` names a section the job cannot run without (e.g.
    ``"train"``). A user mistake (bad file, bad key, missing section) exits with one message,
    not a traceback.
    """
    from spladeray.config import ConfigError, load_config

    path = Path(args.config) if args.config else ROOT / args.default_config
    note = "" if args.config else " (the default; choose another with --config)"
    print(f"[config] {path.resolve()}{note}", flush=True)
    try:
        cfg = load_config(path, args.overrides)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    if require is not None and getattr(cfg, require) is None:
        sys.exit(f"error: {path}: no {require}: section, and this job needs one")
    return cfg


def checked_outputs(job: str, outputs: list) -> list:
    """``outputs`` (:class:`spladeray.outputs.Output`) with absolute local paths; exits with one
    message, before any work, when one would land in a Ray job's unpacked working directory."""
    from spladeray.outputs import OutputLocationError, check_outputs

    try:
        return check_outputs(outputs, example_command=f"python jobs/{job}.py")
    except OutputLocationError as exc:
        sys.exit(f"error: {exc}")


def print_written(job: str, outputs: list, *, skip: tuple[str, ...] = ()) -> None:
    """The job's last line: ``[job] wrote: <what> <where>, ...`` (lasting locations)."""
    from spladeray.outputs import summary_line

    print(summary_line(job, outputs, skip=skip), flush=True)
