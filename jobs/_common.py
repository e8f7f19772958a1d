"""Shared argument parsing for the thin entry points in jobs/."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

# Entry points run from a checkout without installing too: put platform/ on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))


def parse_args(description: str, extra=None) -> argparse.Namespace:
    """``--config FILE`` plus ``--set key=value`` overrides, and any job-specific flags."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="YAML config file (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.max_steps=10 (repeatable)",
    )
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    logging.basicConfig(
        level=os.environ.get("SPLADERAY_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return args


def load(args: argparse.Namespace):
    """Load the config or exit with the error message (no traceback for a user mistake)."""
    from spladeray.config import ConfigError, load_config

    try:
        return load_config(args.config, args.overrides)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
