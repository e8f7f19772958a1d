#!/usr/bin/env python3
"""Validation sweep: ``python jobs/sweep.py --sweep configs/sweeps/demo.yaml [--config X.yaml]
[--concurrency N] [--max-failures K]``.

Trains each variant the sweep file names (overrides of the config) and ranks them on the
validation queries (train.eval with a holdout); the test split is never evaluated. The variants
are Ray Tune trials: ``--concurrency`` of them train side by side (the sweep file's
``concurrency``, default 1; each trial's workers need their own CPUs/GPUs), and a failed trial is
restarted up to ``--max-failures`` times (``max_failures``, default 1) from its last checkpoint.
A variant that still fails is marked in the table and the job exits non-zero naming it; the
others' rows are kept. Prints the table and writes sweep.json / sweep.md under
<train.output_dir>/<sweep>/ (Tune's own folder: <sweep>/tune). Re-running resumes.
docs/train.md, "Selection protocol", has the protocol and the demo's sweep.
"""

import sys

from _common import ROOT, checked_outputs, parse_args, print_written


def flags(parser) -> None:
    parser.add_argument("--sweep", required=True, help="sweep file (configs/sweeps/)")
    parser.add_argument("--concurrency", type=int, help="trials at once (default: sweep file)")
    parser.add_argument("--max-failures", type=int, help="restarts of a failed trial")


def main() -> None:
    args = parse_args(__doc__, flags)
    from spladeray.config import ConfigError
    from spladeray.outputs import sweep_outputs
    from spladeray.train.sweep import load_sweep, run_sweep, sweep_table, variant_configs

    config = args.config or str(ROOT / args.default_config)
    try:
        spec = load_sweep(args.sweep)
        variants = variant_configs(config, spec, list(args.overrides))
        outputs = checked_outputs("sweep", sweep_outputs(variants, spec["name"]))
        rows = run_sweep(
            config,
            spec,
            args.overrides,
            concurrency=args.concurrency,
            max_failures=args.max_failures,
        )
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    print(sweep_table(rows))
    print_written("sweep", outputs)
    failed = [f"{r.variant} ({r.error})" for r in rows if r.error]
    if failed:
        sys.exit("error: variant(s) failed: " + "; ".join(failed) + " (re-run to retry them)")


if __name__ == "__main__":
    main()
