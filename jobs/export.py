#!/usr/bin/env python3
"""Export the model for OpenSearch ML Commons, and optionally register + deploy it.

    python jobs/export.py                                      # configs/demo.yaml's model
    python jobs/export.py --config configs/production.yaml
    python jobs/export.py --config configs/production.yaml --register            # chunked upload
    python jobs/export.py --config configs/production.yaml --register \\
        --url-prefix https://models.example.com/spladeray/                     # cluster downloads
"""

import json
import sys

from _common import load, parse_args


def flags(parser) -> None:
    parser.add_argument("--url-prefix", help="where the zips will be served (sets `url`)")
    parser.add_argument(
        "--register",
        action="store_true",
        help="register (and deploy) in ML Commons on index.opensearch (credentials from env)",
    )
    parser.add_argument("--no-deploy", action="store_true", help="register only")
    parser.add_argument("--predict", metavar="TEXT", help="after deploying, encode TEXT once")


def main() -> None:
    args = parse_args(__doc__, flags)
    cfg = load(args)
    from spladeray.mlcommons import MLCommonsError, run_export

    try:
        result = run_export(
            cfg,
            url_prefix=args.url_prefix,
            register=args.register,
            deploy=not args.no_deploy,
            predict=args.predict,
        )
    except MLCommonsError as exc:
        sys.exit(f"error: {exc}")
    print(json.dumps(result.summary(), indent=2))


if __name__ == "__main__":
    main()
