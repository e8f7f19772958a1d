"""The quiet console's lines (spladeray.console): training progress with ETA, sweep ETA,
rank 0's validation; and that configure() sends Ray's and libraries' INFO to the log only."""

from __future__ import annotations

import logging
import time

from spladeray import console


def test_train_line_has_percent_elapsed_eta_and_figures():
    event = {
        "step": 140,
        "max_steps": 200,
        "start_step": 0,
        "elapsed": 151.0,
        "loss": 0.41234,
        "query_dims": 23.4,
        "document_dims": 156.2,
        "samples_per_s": 12.34,
    }
    line = console.train_line(event)
    # 151 s for 140 steps -> 60 more steps take 64.7 s
    assert line == (
        "[train] step 140/200 (70%) | 2:31 elapsed, ~1:05 left | loss 0.4123 | "
        "q/d dims 23/156 | 12.3 samples/s"
    )


def test_eta_counts_only_the_steps_of_this_attempt():
    """A resumed run (start_step 100) has run 20 steps in 40 s: 80 more take 160 s."""
    event = {"step": 120, "max_steps": 200, "start_step": 100, "elapsed": 40.0}
    assert "0:40 elapsed, ~2:40 left" in console.train_line(event)
    first = {"step": 100, "max_steps": 200, "start_step": 100, "elapsed": 0.0}
    assert "left" not in console.train_line(first)  # no step done yet: no estimate


def test_sweep_line_says_variant_step_and_time_left_for_the_sweep():
    """Variant 3 of 8 at half its steps: 2.5 of 8 variants took 25 min, 55 min are left."""
    event = {"step": 200, "max_steps": 400, "start_step": 0, "elapsed": 300.0}
    sweep = {"index": 3, "count": 8, "start": 0.0}
    line = console.train_line(event, sweep, now=25 * 60.0)
    assert line.startswith("[sweep] variant 3/8, step 200/400, ~55 min left for the sweep | ")
    assert "[train] step 200/400 (50%)" in line


def test_side_by_side_sweep_lines_name_the_variant_and_count_trials(capsys):
    """Trials of a Tune sweep: each line names its variant, how many run and how many are done;
    the time left comes from every trial's progress (here 1 done + 0.5 of 4 in 30 min)."""
    console.sweep_begin(["s-a", "s-b", "s-c", "s-d"], ["a", "b", "c", "d"])
    try:
        console.sweep_trial("s-a", "started")
        console.sweep_trial("s-b", "started")
        console.sweep_trial("s-a", "done")
        console.sweep_trial("s-c", "started")
        console.sweep_trial("s-c", "failed", "boom")
        printed = capsys.readouterr().out.splitlines()
        assert printed[0] == "[sweep] variant 1/4 a started | 1 running, 0/4 done"
        assert printed[2] == "[sweep] variant 1/4 a done | 1 running, 1/4 done"
        assert printed[4] == "[sweep] variant 3/4 c failed (boom) | 1 running, 1/4 done, 1 failed"
        sweep = dict(console._state["sweep"], start=0.0)
        sweep["progress"] = {"s-a": 1.0, "s-c": 1.0}
        event = {"run": "s-b", "step": 50, "max_steps": 100, "start_step": 0, "elapsed": 60.0}
        line = console.train_line(event, sweep, now=30 * 60.0)
        assert line.startswith(
            "[sweep] variant 2/4 b, step 50/100, 1 running, 1/4 done, 1 failed, ~18 min left"
        )
    finally:
        console.sweep_done()


def test_validation_lines():
    start = {"state": "start", "step": 100, "docs": 1500}
    assert console.eval_line(start) == (
        "[train] validation at step 100: encoding 1,500 docs and its queries, then searching"
    )
    figures = {"nDCG@10": 0.7712, "doc dims": 155.75}
    done = {"state": "done", "step": 100, "metrics": figures, "seconds": 47.6}
    assert console.eval_line(done) == (
        "[train] validation at step 100: nDCG@10 0.7712, doc dims 156 (48 s)"
    )


def test_validation_progress_is_throttled_and_shown_as_a_percentage(monkeypatch):
    posted = []
    monkeypatch.setattr(console, "post", posted.append)
    hook = console.throttled_eval_progress(100, every_s=3600)
    for done in (32, 64, 1500):  # only the end passes a throttle of an hour
        hook("document", done, 1500)
    hook("query", 10, 48)
    assert [(e["what"], e["done"]) for e in posted] == [("document", 1500)]
    progress = {"state": "progress", "step": 100, "what": "document", "done": 650, "total": 1500}
    assert console.eval_line(progress) == (
        "[train] validation at step 100: encoding documents 43% (650/1,500)"
    )


def test_the_stage_heartbeat_stays_quiet_while_training_lines_flow(capsys, monkeypatch):
    """Off a terminal, silence longer than HEARTBEAT_S prints ``[stage] m:ss elapsed``, but not
    between training lines (their own clock would read as a different time)."""
    watcher = console.Watcher(relay=None)
    watcher.tty = False
    monkeypatch.setitem(console._state, "stage", ("train", 0.0))
    now = time.monotonic()
    watcher.last_print = watcher.last_train_line = now - console.HEARTBEAT_S - 1
    watcher._heartbeat()
    assert capsys.readouterr().out == ""
    watcher.last_print = watcher.last_train_line = now - 3 * console.HEARTBEAT_S - 1
    watcher._heartbeat()
    assert capsys.readouterr().out.startswith("[train] ")


def test_clock():
    assert console.clock(5) == "0:05" and console.clock(151) == "2:31"
    assert console.clock(3723) == "1:02:03"


def test_verbose_switch(monkeypatch):
    monkeypatch.delenv(console.LOG_ENV, raising=False)
    assert not console.is_verbose() and console.is_verbose(True)
    monkeypatch.setenv(console.LOG_ENV, "debug")
    assert console.is_verbose()


def test_quiet_configure_keeps_info_off_the_console_and_in_the_log(tmp_path, capsys, monkeypatch):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    for key in ("HF_HUB_DISABLE_PROGRESS_BARS", "RAY_DATA_LOGGING_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setitem(console._state, "quiet", False)
    try:
        console.configure(verbose=False)
        assert console.quiet()
        logging.getLogger("httpx").info("HTTP Request: GET /healthz")
        logging.getLogger("spladeray.x").warning("a warning of ours")
        path = console.attach_log_file(tmp_path / "driver.log")
        # Serve's logger stops propagating once ray.serve has set it up (as any earlier test
        # that imported Serve did): the demo routes it to the log file, and so does this test
        console.route_library_logger("ray.serve")
        logging.getLogger("ray.serve").info("Deployed app")
        err = capsys.readouterr().err
        assert "a warning of ours" in err
        assert "HTTP Request" not in err and "Deployed app" not in err
        text = path.read_text()
        assert "HTTP Request" in text and "a warning of ours" in text and "Deployed app" in text
        import os

        assert os.environ["RAY_DATA_LOGGING_CONFIG"].endswith("ray_data_logging.yaml")
    finally:
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
                h.close()
        root.setLevel(level)
        logging.captureWarnings(False)
        logging.getLogger("py.warnings").propagate = True
        logging.getLogger("py.warnings").handlers.clear()
        console._state.update(quiet=False, buffer=None)


RELAY_SCRIPT = """
import logging, sys
sys.path.insert(0, {platform!r})
from spladeray import console
console.configure(verbose=False)
import ray
from spladeray.config import RayConfig
from spladeray.raycluster import ensure_ray

ensure_ray(RayConfig(num_cpus=1, include_dashboard=False))

@ray.remote
def work():
    print("worker stdout noise")
    logging.getLogger("spladeray.worker").info("an info line of ours")
    logging.getLogger("spladeray.worker").warning("a warning from a worker")
    return 1

assert ray.get(work.remote()) == 1
console.flush()
"""


def test_a_worker_warning_reaches_the_quiet_console_and_its_output_does_not(tmp_path):
    """A real local Ray cluster in a subprocess (its own driver, as a job has): the worker's
    WARNING of a spladeray logger comes through the relay; its print and INFO stay in Ray's
    logs (log_to_driver off). About 15 s."""
    import subprocess
    import sys

    from helpers import ROOT

    code = RELAY_SCRIPT.format(platform=str(ROOT / "platform"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "WARNING spladeray.worker: a warning from a worker" in out.stderr
    both = out.stdout + out.stderr
    assert "worker stdout noise" not in both and "an info line of ours" not in both
    assert "[logs] Ray's and this job's logs: " in out.stdout
