#!/usr/bin/env python3
"""The main job on the embedded default: ``python jobs/demo.py [--config configs/demo.yaml]``.

With ``prepare`` and ``train`` sections it runs the whole path (prepare -> train -> export ->
serve -> index -> search -> evaluate); ``--search-only`` just indexes with the configured model
and prints searches.
"""

from _common import checked_outputs, load, parse_args, print_written


def main() -> None:
    args = parse_args(
        __doc__,
        lambda p: p.add_argument(
            "--search-only", action="store_true", help="index + search with the configured model"
        ),
    )
    cfg = load(args)
    from spladeray.outputs import demo_outputs

    full = not (args.search_only or cfg.prepare is None or cfg.train is None)
    outputs = checked_outputs("demo", demo_outputs(cfg, full=full))
    from spladeray.demo import run_full_demo, run_search_demo

    if full:
        run_full_demo(cfg)
    else:
        run_search_demo(cfg)
    print_written("demo", outputs)


if __name__ == "__main__":
    main()
