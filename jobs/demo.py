"""The main job on the embedded default: ``python jobs/demo.py --config configs/demo.yaml``."""

from _common import load, parse_args


def main() -> None:
    cfg = load(parse_args(__doc__))
    from spladeray.demo import run_search_demo

    run_search_demo(cfg)


if __name__ == "__main__":
    main()
