"""Run every benchmark in bench/ and write one report of the ratios: ``make bench``.

Each ``bench/*.py`` (except this file and ``_*.py``) runs as its own subprocess, with a timeout,
from the project root. Its output goes to the console and to ``runs/bench/<script>.log``.

The contract every bench script follows: print one line per comparison::

    RESULT {"name": "encode", "metric": "docs/s", "baseline": 31.2, "candidate": 44.0,
            "ratio": 1.41, "baseline_name": "sentence-transformers", "candidate_name": "spladeray"}

(one line, JSON after ``RESULT ``). A script that cannot run on this machine (e.g. no GPU)
prints ``SKIP <reason>`` and exits 0: it is listed as skipped, not as a failure. Required keys: ``name``, ``ratio``, ``baseline``,
``candidate``; ``ratio`` is how many times better the candidate is (> 1: candidate wins, so for
a time or memory the script divides baseline by candidate). Optional: ``metric`` (unit),
``baseline_name``, ``candidate_name``, and anything else (kept in the JSON report).

Outputs: ``bench/REPORT.md`` and ``bench/report.json``; with the markers ``<!-- bench:start -->``
and ``<!-- bench:end -->`` in README.md, the table between them is replaced too.

    python bench/run_all.py [--timeout 900] [--only encode serve] [--no-readme]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

from spladeray.eval.report import (  # noqa: E402
    bench_markdown,
    parse_result_lines,
    update_readme_section,
)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)


def skip_reason(lines: list[str]) -> str | None:
    """The reason of the last ``SKIP <reason>`` line (a benchmark that cannot run here), or None."""
    reasons = [line[5:].strip() for line in lines if line.startswith("SKIP ")]
    return (reasons[-1] or "no reason given") if reasons else None


NOT_BENCHES = {"gpu_kit"}  # bench/gpu_kit.py builds the GPU kit (downloads); it measures nothing
RUN_ALL_ENV = "SPLADERAY_BENCH_RUN_ALL"  # set for the scripts: train_gpu.py SKIPs without CUDA


def discover(bench_dir: Path, only: list[str] | None, skip: list[str]) -> list[Path]:
    scripts = [
        p
        for p in sorted(bench_dir.glob("*.py"))
        if p.name != Path(__file__).name
        and not p.name.startswith("_")
        and p.stem not in NOT_BENCHES
    ]
    if only:
        scripts = [p for p in scripts if p.stem in only]
    return [p for p in scripts if p.stem not in skip]


def run_script(script: Path, timeout: float, log_dir: Path, python: str) -> dict:
    """Run one script, tee its output to the console and a log, parse its RESULT lines."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{script.stem}.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "platform")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env.setdefault("PYTHONUNBUFFERED", "1")
    env[RUN_ALL_ENV] = "1"
    print(f"\n=== {_rel(script)} (timeout {timeout:.0f}s) ===", flush=True)
    start = time.perf_counter()
    chunks: list[str] = []
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [python, str(script)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # its own process group: a timeout kills its children too
        )
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                chunks.append(line)
                log.write(line)
                sys.stdout.write(line)
            proc.wait()
        finally:
            timer.cancel()
    seconds = time.perf_counter() - start
    results = parse_result_lines("".join(chunks))
    if timed_out.is_set():
        status = "timed out"
    elif proc.returncode != 0:
        status = "failed"
    elif not results and skip_reason(chunks):
        status = f"skipped: {skip_reason(chunks)}"
    elif not results:
        status = "no RESULT line"
    elif any("error" in r for r in results):
        status = "bad RESULT line"
    else:
        status = "ok"
    return {
        "script": _rel(script),
        "status": status,
        "returncode": proc.returncode,
        "seconds": round(seconds, 1),
        "log": _rel(log_path),
        "results": results,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per script")
    parser.add_argument("--only", nargs="*", help="run only these scripts (stems, e.g. encode)")
    parser.add_argument("--skip", nargs="*", default=[], help="skip these scripts (stems)")
    parser.add_argument("--bench-dir", type=Path, default=ROOT / "bench")
    parser.add_argument(
        "--out-dir", type=Path, default=ROOT / "bench", help="REPORT.md, report.json"
    )
    parser.add_argument("--log-dir", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the scripts")
    args = parser.parse_args()

    scripts = discover(args.bench_dir, args.only, args.skip)
    if not scripts:
        print(f"no bench scripts found in {args.bench_dir}", file=sys.stderr)
        return 1
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ran = [run_script(s, args.timeout, args.log_dir, args.python) for s in scripts]
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    report = {"created": started, "machine": machine, "scripts": ran}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    body = bench_markdown(ran) + f"\nMeasured {started} on {machine} by `make bench`.\n"
    (args.out_dir / "REPORT.md").write_text("# Benchmarks\n\n" + body)
    print("\n" + body)
    print(f"wrote {args.out_dir / 'REPORT.md'} and {args.out_dir / 'report.json'}")
    if not args.no_readme and args.readme.is_file():
        if update_readme_section(args.readme, body):
            print(f"updated the performance section of {args.readme}")
        else:
            print(
                f"{args.readme}: no <!-- bench:start --> / <!-- bench:end --> markers; not changed"
            )
    failed = [r["script"] for r in ran if r["status"] != "ok" and "skipped" not in r["status"]]
    if failed:
        print(f"not measured: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
