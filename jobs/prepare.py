#!/usr/bin/env python3
"""Training data on Ray Data: ``python jobs/prepare.py [--config configs/demo.yaml] [--force]``.

Reads the ``prepare:`` section (see docs/prepare.md) and writes parquet shards, a manifest and
rejects.jsonl to ``prepare.output_dir``; a second run with the same config is a no-op.
"""

from _common import checked_outputs, load, parse_args, print_written


def main() -> None:
    args = parse_args(
        __doc__,
        lambda p: p.add_argument("--force", action="store_true", help="rebuild finished output"),
    )
    cfg = load(args, require="prepare")
    from spladeray.outputs import prepare_outputs

    outputs = checked_outputs("prepare", prepare_outputs(cfg.prepare))
    from spladeray.data.pipeline import run_prepare

    run_prepare(cfg.prepare, force=args.force, ray_config=cfg.ray)
    print_written("prepare", outputs)


if __name__ == "__main__":
    main()
