"""Bulk-index a corpus with Ray Data: ``python jobs/index.py --config configs/demo.yaml``.

Also ``ray job submit --working-dir . -- python jobs/index.py --config ...``. ``--resume`` skips
ids already in the index (also ``index.resume: true``); ``--limit N`` indexes the first N rows.
"""

from _common import load, parse_args


def _flags(parser) -> None:
    parser.add_argument("--resume", action="store_true", default=None, help="skip indexed ids")
    parser.add_argument("--limit", type=int, default=None, help="index only the first N rows")


def main() -> None:
    args = parse_args(__doc__, _flags)
    cfg = load(args)
    from spladeray.serving.indexing import print_summary, run_index_job

    summary = run_index_job(cfg, resume=args.resume, limit=args.limit)
    print_summary(summary)
    if summary["failed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
