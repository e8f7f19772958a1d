#!/usr/bin/env python3
"""Evaluate BM25 / sparse / dense / hybrid systems on BEIR data: ``python jobs/evaluate.py``.

Runs the config's ``evaluate:`` section (datasets x systems; without one, BM25 vs the model on
the ``data:`` section), prints the table and writes ``results.json``, ``results.md`` and
``quality_vs_dims.png`` under ``evaluate.output_dir``. The default config (configs/demo.yaml)
uses 1,500 SciFact abstracts; ``--config configs/evaluate_scifact.yaml`` the whole corpus.
"""

from _common import checked_outputs, load, parse_args, print_written


def main() -> None:
    cfg = load(parse_args(__doc__))
    from spladeray.outputs import evaluate_outputs

    outputs = checked_outputs("evaluate", evaluate_outputs(cfg))
    from spladeray.eval import run_evaluation

    run_evaluation(cfg)
    print_written("evaluate", outputs)


if __name__ == "__main__":
    main()
