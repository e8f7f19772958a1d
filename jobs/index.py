#!/usr/bin/env python3
"""Bulk-index a corpus with Ray Data: ``python jobs/index.py [--config configs/demo.yaml]``.

Also ``ray job submit --working-dir . -- python jobs/index.py --config ...``. ``--resume`` skips
ids already in the index, as the backend reports them (also ``index.resume: true``); when the
backend becomes unreachable the job stops, says how many documents were confirmed, and
``--resume`` continues from there; ``--limit N`` indexes the first N rows.
On OpenSearch, ``--rollout`` builds ``<alias>-<model hash>`` beside the live index, verifies its
count and swaps the alias atomically; ``--rollback [INDEX]`` points the alias back.
"""

import json

from _common import checked_outputs, load, parse_args, print_written


def _flags(parser) -> None:
    parser.add_argument("--resume", action="store_true", default=None, help="skip indexed ids")
    parser.add_argument("--limit", type=int, default=None, help="index only the first N rows")
    parser.add_argument(
        "--rollout", action="store_true", help="build a versioned index, verify, swap the alias"
    )
    parser.add_argument(
        "--rebuild", action="store_true", help="with --rollout: rebuild an existing version"
    )
    parser.add_argument(
        "--rollback",
        nargs="?",
        const="",
        default=None,
        metavar="INDEX",
        help="point the alias back at the previous version (or INDEX)",
    )


def main() -> None:
    args = parse_args(__doc__, _flags)
    cfg = load(args, require=None if args.rollback is not None else "data")
    from spladeray.outputs import index_outputs

    outputs = checked_outputs("index", index_outputs(cfg))
    if args.rollback is not None:
        from spladeray.index.rollout_job import run_rollback

        print(json.dumps(run_rollback(cfg, args.rollback), indent=2))
        print_written("index", outputs)
        return
    if args.rollout:
        from spladeray.index.rollout_job import run_rollout

        print(json.dumps(run_rollout(cfg, limit=args.limit, rebuild=args.rebuild), indent=2))
        print_written("index", outputs)
        return
    from spladeray.index.base import IndexUnavailableError
    from spladeray.index.bulk import IndexingStopped, run_index

    try:
        summary = run_index(cfg, resume=args.resume, limit=args.limit)
    except IndexingStopped as exc:
        print("\n" + exc.summary.report())
        raise SystemExit(f"error: {exc}") from None
    except IndexUnavailableError as exc:  # unreachable before anything was sent
        raise SystemExit(f"error: {exc}; nothing was indexed") from None
    print("\n" + summary.report())
    print_written("index", outputs)
    if summary.failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
