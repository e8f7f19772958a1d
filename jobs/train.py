#!/usr/bin/env python3
"""Distributed training on Ray Train: ``python jobs/train.py [--config configs/X.yaml]``.

On a cluster: ``ray job submit --working-dir . -- python jobs/train.py --config configs/X.yaml``.
Re-running with the same ``train.name`` resumes from that run's latest checkpoint. When the
config's ``prepare.output_dir`` is ``train.data_dir`` (as in the default configs/demo.yaml: 2 CPU
workers, 20 steps), the prepare stage runs first; it is a no-op when its output is up to date.
"""

from _common import checked_outputs, load, parse_args, print_written


def main() -> None:
    args = parse_args(
        __doc__,
        lambda p: p.add_argument(
            "--no-prepare",
            action="store_true",
            help="fail if the prepared data is missing instead of running prepare first",
        ),
    )
    cfg = load(args, require="train")
    from spladeray.outputs import train_outputs

    outputs = checked_outputs("train", train_outputs(cfg, prepare=not args.no_prepare))
    from spladeray.train import run_train

    result = run_train(cfg, prepare=not args.no_prepare)
    m = result.metrics
    print(
        f"[train] done: step {m.get('step')} in {result.seconds:.1f}s "
        f"(training {m.get('train_seconds', 0.0):.1f}s, evaluation excluded); "
        f"checkpoint {result.checkpoint_path}; model {result.model_dir}"
    )
    from spladeray.train.evaluation import comparison_table

    table = comparison_table(m)
    if table:
        print(table)
    print_written("train", outputs, skip=() if result.model_dir else ("model",))


if __name__ == "__main__":
    main()
