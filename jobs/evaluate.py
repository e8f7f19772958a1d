"""Evaluate BM25 / sparse / dense / hybrid systems on BEIR data: ``python jobs/evaluate.py --config configs/evaluate_scifact.yaml``.

Runs the config's ``evaluate:`` section (datasets x systems), prints the table and writes
``results.json``, ``results.md`` and ``quality_vs_dims.png`` under ``evaluate.output_dir``.
"""

from _common import load, parse_args


def main() -> None:
    cfg = load(parse_args(__doc__))
    from spladeray.eval import run_evaluation

    run_evaluation(cfg)


if __name__ == "__main__":
    main()
