#!/usr/bin/env python3
"""Validation sweep: ``python jobs/sweep.py --sweep configs/sweeps/demo.yaml [--config X.yaml]``.

Trains each variant the sweep file names (overrides of the config) on the same prepared data and
ranks them on the validation queries (train.eval with a holdout); the test split is never
evaluated. Prints the table and writes sweep.json / sweep.md under <train.output_dir>/<sweep>/.
docs/train.md, "Selection protocol", has the protocol and the demo's sweep.
"""

import sys

from _common import ROOT, checked_outputs, parse_args, print_written


def main() -> None:
    args = parse_args(
        __doc__,
        lambda p: p.add_argument("--sweep", required=True, help="sweep file (configs/sweeps/)"),
    )
    from spladeray.config import ConfigError
    from spladeray.outputs import sweep_outputs
    from spladeray.train.sweep import load_sweep, run_sweep, sweep_table, variant_configs

    config = args.config or str(ROOT / args.default_config)
    try:
        spec = load_sweep(args.sweep)
        variants = variant_configs(config, spec, list(args.overrides))
        outputs = checked_outputs("sweep", sweep_outputs(variants, spec["name"]))
        rows = run_sweep(config, spec, args.overrides)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    print(sweep_table(rows))
    print_written("sweep", outputs)


if __name__ == "__main__":
    main()
