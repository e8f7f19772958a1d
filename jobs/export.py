"""Export the model for OpenSearch ML Commons, and optionally register + deploy it.

    python jobs/export.py --config configs/production.yaml
    python jobs/export.py --config configs/production.yaml --register            # chunked upload
    python jobs/export.py --config configs/production.yaml --register \\
        --url-prefix https://models.example.com/spladeray/                     # cluster downloads
"""

import json

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
    from spladeray.config import ExportConfig
    from spladeray.model.export import export_from_config

    result = export_from_config(cfg, url_prefix=args.url_prefix)
    print(json.dumps(result.summary(), indent=2))
    if not args.register:
        return

    from spladeray.index.opensearch import build_client
    from spladeray.mlcommons import MLCommonsClient

    mc = (cfg.export or ExportConfig()).ml_commons
    client = MLCommonsClient(build_client(cfg.index.opensearch), poll_interval_s=mc.poll_interval_s)
    for exported in (result.encoder_zip, result.tokenizer_zip):
        if exported is None:
            continue
        deployed = client.register_and_deploy(
            exported.register_body,
            zip_path=None if exported.register_body.get("url") else exported.path,
            model_group=mc.model_group,
            model_group_description=mc.model_group_description,
            cluster_settings=mc.cluster_settings,
            deploy=mc.deploy and not args.no_deploy,
            chunk_bytes=mc.chunk_bytes,
            register_timeout_s=mc.register_timeout_s,
            deploy_timeout_s=mc.deploy_timeout_s,
        )
        print(json.dumps({"function_name": exported.function_name, **deployed.__dict__}))
        if args.predict and deployed.state == "DEPLOYED":
            vector = client.predict_sparse(deployed.model_id, [args.predict])[0]
            top = sorted(vector.items(), key=lambda kv: -kv[1])[:10]
            print(json.dumps({"predict": args.predict, "top_tokens": top}))


if __name__ == "__main__":
    main()
