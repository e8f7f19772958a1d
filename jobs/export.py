#!/usr/bin/env python3
"""Export the model: OpenSearch ML Commons zips (TorchScript or ONNX), or a Hub-ready directory.

    python jobs/export.py                                      # configs/demo.yaml's model, TorchScript
    python jobs/export.py --format onnx                        # one ONNX graph, pooling inside
    python jobs/export.py --format hf                          # save_pretrained + model card
    python jobs/export.py --format hf --push-to-hub acme/my-splade     # needs HF_TOKEN + network
    python jobs/export.py --config configs/production.yaml --register            # chunked upload
    python jobs/export.py --config configs/production.yaml --register \\
        --url-prefix https://models.example.com/spladeray/                     # cluster downloads
"""

import json
import sys

from _common import checked_outputs, load, parse_args, print_written

FORMATS = {"torchscript": "TORCH_SCRIPT", "onnx": "ONNX", "hf": None}


def flags(parser) -> None:
    parser.add_argument(
        "--format",
        choices=sorted(FORMATS),
        help="torchscript / onnx: ML Commons zip (default: export.model_format); hf: a Hugging "
        "Face Hub-ready directory (save_pretrained + README.md model card)",
    )
    parser.add_argument("--output", help="hf: the directory to write (default <export dir>/hf)")
    parser.add_argument(
        "--push-to-hub", metavar="REPO", help="hf: upload to this Hub repo (private)"
    )
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
    from spladeray.outputs import Output, export_outputs

    hf = args.format == "hf"
    outputs = checked_outputs("export", export_outputs(cfg, hf=hf, hf_output=args.output))
    if hf:
        from spladeray.model.hub import export_hf_from_config, push_to_hub

        out = export_hf_from_config(cfg, args.output)
        summary = {"format": "hf", "directory": str(out)}
        if args.push_to_hub:
            summary["hub_url"] = push_to_hub(out, args.push_to_hub)
            outputs.append(Output("hub repo", "--push-to-hub", summary["hub_url"]))
        print(json.dumps(summary, indent=2))
        print_written("export", outputs)
        return
    from spladeray.mlcommons import MLCommonsError, run_export

    try:
        result = run_export(
            cfg,
            url_prefix=args.url_prefix,
            register=args.register,
            deploy=not args.no_deploy,
            predict=args.predict,
            model_format=FORMATS[args.format] if args.format else None,
        )
    except MLCommonsError as exc:
        sys.exit(f"error: {exc}")
    print(json.dumps(result.summary(), indent=2))
    print_written("export", outputs)


if __name__ == "__main__":
    main()
