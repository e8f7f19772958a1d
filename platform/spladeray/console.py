"""The console a person watches: quiet by default, everything with ``--verbose``.

Quiet (what the jobs configure, :func:`configure`): each stage prints its header, one progress
line (repainted on a terminal, one every :data:`LINE_EVERY_S` seconds otherwise) and its result
line; a warning or error from our code always shows. Everything else goes to log files, by
Ray's own settings (no text filtering):

- ``ray.init(log_to_driver=False)``: the output of Ray's worker processes (Ray Train's controller
  and workers with their ``TrainingReport(...)`` lines, Ray Data's operators, Serve's controller
  and replicas, the raylet's and GCS's warnings) stays in the session's ``logs/`` folder, which
  the dashboard shows;
- ``ray.init(logging_level=WARNING)`` for Ray's driver-side logger;
- ``RAY_DATA_LOGGING_CONFIG`` (``ray_data_logging.yaml``): Ray Data's driver-side messages
  (execution plans, non-TTY progress logs) to its ``ray-data.log`` only, and
  ``DataContext.enable_operator_progress_bars = False``: one bar per dataset on a terminal;
- ``HF_HUB_DISABLE_PROGRESS_BARS``: no ``Loading weights`` bars; ``TRANSFORMERS_VERBOSITY``:
  transformers' own notices to errors only;
- Serve's driver-side logger (``ray.serve``, its own stream handler): WARNING and up on the
  console, everything in the log file (:func:`route_library_logger`);
- our driver's own log (INFO and up, every logger, Python warnings included) in
  ``<session>/logs/spladeray-driver.log``, next to Ray's.

What happens in workers reaches the console through one small actor, the relay (:func:`post`,
:class:`Watcher`): rank 0's training and validation progress, and every WARNING or ERROR record
of a ``spladeray`` logger in any worker of the job (the worker setup hook,
:func:`spladeray.raylogging.worker_setup`). A thread of the driver drains it once a second.

``--verbose`` or ``SPLADERAY_LOG=debug`` keeps Ray's defaults (everything on the console, as
before); a library user who never calls :func:`configure` gets Ray's defaults too.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import logging.handlers
import os
import sys
import threading
import time
from pathlib import Path

from spladeray.raylogging import RELAY_ENV, RELAY_NAMESPACE, RELAY_WAIT_S, relay_handle

LOG_ENV = "SPLADERAY_LOG"
"""``debug``: the verbose console, as ``--verbose``."""
LEVEL_ENV = "SPLADERAY_LOG_LEVEL"
"""The console's level in verbose mode (default INFO)."""
LINE_EVERY_S = 15.0
"""Off a terminal: at most one progress line per stage this often (evaluations and the last
step always print)."""
HEARTBEAT_S = 30.0
"""Off a terminal: a stage silent this long prints how long it has run."""
DRIVER_LOG = "spladeray-driver.log"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_state: dict = {
    "quiet": False,
    "verbose": False,
    "buffer": None,
    "watcher": None,
    "stage": None,
    "sweep": None,
}


def is_verbose(flag: bool = False) -> bool:
    """``--verbose`` given, or ``$SPLADERAY_LOG`` is ``debug``."""
    return flag or os.environ.get(LOG_ENV, "").strip().lower() == "debug"


def verbose() -> bool:
    """Whether the person asked for libraries' own console output (``--verbose`` given to
    :func:`configure`, or ``$SPLADERAY_LOG`` is ``debug``): e.g. Ray Tune's status tables."""
    return is_verbose(_state.get("verbose", False))


def quiet() -> bool:
    """Whether :func:`configure` set up the quiet console (false for library users)."""
    return _state["quiet"]


def configure(verbose: bool = False) -> None:
    """Set up logging for a job's driver: the quiet console, or Ray's defaults when ``verbose``.

    Called by every entry point before Ray or Hugging Face libraries are imported (the
    environment settings below are read at import)."""
    level = os.environ.get(LEVEL_ENV, "INFO")
    _state["verbose"] = verbose
    if verbose:
        _state["quiet"] = False
        logging.basicConfig(level=level, format=FORMAT)
        return
    _state["quiet"] = True
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault(
        "RAY_DATA_LOGGING_CONFIG", str(Path(__file__).with_name("ray_data_logging.yaml"))
    )
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    # the driver's full log: held in memory until Ray's session folder exists (attach_log_file)
    buffer = logging.handlers.MemoryHandler(100_000, flushLevel=logging.CRITICAL + 1)
    buffer.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(console)
    root.addHandler(buffer)
    _state["buffer"] = buffer
    logging.captureWarnings(True)  # Python warnings (mostly libraries' deprecations) to the file
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.propagate = False
    warnings_logger.addHandler(buffer)


def ray_init_options(runtime_env: dict) -> dict:
    """``ray.init`` options of the quiet console (none when verbose); names the relay in
    ``runtime_env`` (which must carry the worker setup hook, else workers cannot relay)."""
    if not quiet():
        return {}
    if runtime_env.get("worker_process_setup_hook"):
        env_vars = dict(runtime_env.get("env_vars") or {})
        env_vars[RELAY_ENV] = f"spladeray-console-{os.getpid()}-{time.time_ns()}"
        env_vars.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        runtime_env["env_vars"] = env_vars
    return {"log_to_driver": False, "logging_level": logging.WARNING}


def after_ray_init(runtime_env: dict, dashboard_url: str | None) -> None:
    """Driver side of the quiet console, once Ray is up: the log file in the session's logs
    folder, Ray Data's one bar per dataset, the relay and its watcher thread."""
    if not quiet():
        return
    import ray
    from ray.data import DataContext

    DataContext.get_current().enable_operator_progress_bars = False
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    path = attach_log_file(logs / DRIVER_LOG)
    where = f"{path.parent}" + (f" and the dashboard ({dashboard_url})" if dashboard_url else "")
    print(f"[logs] Ray's and this job's logs: {where}; --verbose shows them here", flush=True)
    name = (runtime_env.get("env_vars") or {}).get(RELAY_ENV)
    if name and _state["watcher"] is None:
        relay = _relay_class().options(name=name, namespace=RELAY_NAMESPACE).remote()
        os.environ[RELAY_ENV] = name  # the driver posts too (post) and resolves the same actor
        watcher = Watcher(relay)
        watcher.start()
        _state["watcher"] = watcher
        atexit.register(watcher.stop)  # runs before Ray's own exit handler (registered earlier)


def attach_log_file(path: Path) -> Path:
    """Write the buffered and all later driver log records to ``path``."""
    buffer = _state["buffer"]
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(FORMAT))
    if buffer is not None:
        buffer.setTarget(handler)
        buffer.flush()
        buffer.flushLevel = logging.DEBUG  # from now on every record goes straight through
        buffer.capacity = 1
    return path


def route_library_logger(name: str) -> None:
    """A library logger with its own console handler and no propagation (Serve's ``ray.serve``
    in the driver, set up at import): on the quiet console its stream handlers show WARNING and
    up only, and all its records also go to the driver's log file."""
    buffer = _state["buffer"]
    if not quiet() or buffer is None:
        return
    logger = logging.getLogger(name)
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            handler.setLevel(logging.WARNING)
    if buffer not in logger.handlers:
        logger.addHandler(buffer)


def _relay_class():
    import ray

    @ray.remote(num_cpus=0, max_concurrency=4)
    class ConsoleRelay:
        """Holds what workers post until the driver's watcher drains it."""

        def __init__(self) -> None:
            self.events: list[dict] = []

        def put(self, event: dict) -> None:
            self.events.append(event)

        def drain(self) -> list[dict]:
            events, self.events = self.events, []
            return events

    return ConsoleRelay


def post(event: dict) -> None:
    """Send a progress event to the driver's console (a no-op when no relay is configured).

    Waits (a few ms) until the relay holds it, so that the last step's line is there when
    ``fit`` returns and the driver flushes; a relay that does not answer costs a debug log
    line, never the run."""
    handle = relay_handle()
    if handle is None:
        return
    import ray

    try:
        ray.get(handle.put.remote(event), timeout=RELAY_WAIT_S)
    except Exception as exc:
        logging.getLogger(__name__).debug("console relay: %s", exc)


# ---------------------------------------------------------------------------- stages and sweeps
def begin_stage(name: str | None) -> None:
    """Marks the stage running now (``None``: none): off a terminal, silence longer than
    :data:`HEARTBEAT_S` prints ``[name] m:ss elapsed``."""
    flush()
    _state["stage"] = (name, time.monotonic()) if name else None
    if _state["watcher"] is not None:
        _state["watcher"].last_print = time.monotonic()


def sweep_variant(index: int, count: int) -> None:
    """The sequential sweep is at variant ``index`` (1-based) of ``count``: training lines say
    so, with the time left for the whole sweep."""
    sweep = _state["sweep"]
    if sweep is None or index == 1:
        sweep = _state["sweep"] = {"start": time.monotonic()}
    sweep.update(index=index, count=count)


def sweep_begin(runs: list[str], variants: list[str]) -> None:
    """A sweep whose trials run side by side starts: ``runs`` are the variants' run names (the
    ``run`` of their workers' events), in the sweep file's order. Training lines then name their
    variant, how many trials run and how many are done (:func:`sweep_trial`)."""
    _state["sweep"] = {
        "start": time.monotonic(),
        "count": len(runs),
        "runs": list(runs),
        "variants": dict(zip(runs, variants, strict=True)),
        "progress": {},
        "running": set(),
        "done": set(),
        "failed": set(),
    }


def sweep_trial(run: str, state: str, error: str | None = None) -> None:
    """A trial of the sweep ``started``, is ``retrying``, is ``done`` or ``failed``: one line,
    ``[sweep] variant 2/4 kl started | 2 running, 1/4 done``."""
    sweep = _state["sweep"]
    if sweep is None or run not in sweep["runs"]:
        return
    sweep["running"].discard(run)
    if state in ("started", "retrying"):
        sweep["running"].add(run)
    elif state == "done":
        sweep["done"].add(run)
        sweep["progress"][run] = 1.0
    elif state == "failed":
        sweep["failed"].add(run)
        sweep["progress"][run] = 1.0
    index = sweep["runs"].index(run) + 1
    line = f"[sweep] variant {index}/{sweep['count']} {sweep['variants'][run]} {state}"
    if error:
        line += f" ({error})"
    say(line + " | " + sweep_counts(sweep))


def sweep_counts(sweep: dict) -> str:
    """``2 running, 1/4 done`` (``, 1 failed`` when one did)."""
    text = f"{len(sweep['running'])} running, {len(sweep['done'])}/{sweep['count']} done"
    return text + (f", {len(sweep['failed'])} failed" if sweep["failed"] else "")


def sweep_done() -> None:
    _state["sweep"] = None


def say(line: str) -> None:
    """Print one line of our own on the console (through the watcher when there is one, so it
    does not break a repainted progress line)."""
    watcher = _state["watcher"]
    if watcher is None:
        print(line, flush=True)
        return
    with watcher.lock:
        watcher._print(line)


def flush() -> None:
    """Print what the relay holds now (e.g. the last step's line before a stage's result)."""
    watcher = _state["watcher"]
    if watcher is not None:
        watcher.drain_once()


def clock(seconds: float) -> str:
    """``2:31``, ``1:02:03``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def minutes(seconds: float) -> str:
    """``~14 min`` (``~40 s`` under a minute)."""
    return f"~{seconds / 60:.0f} min" if seconds >= 60 else f"~{seconds:.0f} s"


def train_line(event: dict, sweep: dict | None = None, now: float | None = None) -> str:
    """``[train] step 140/200 (70%) | 2:31 elapsed, ~1:05 left | loss ... | q/d dims ... |
    samples/s`` from a rank-0 progress event (:meth:`spladeray.train.reporter.Reporter.report`);
    with ``sweep`` (``{index, count, start}``), prefixed by the variant and ending with the time
    left for the sweep."""
    step, total = int(event["step"]), int(event["max_steps"])
    done = max(0, step - int(event.get("start_step", 0)))
    elapsed = float(event.get("elapsed", 0.0))
    left = elapsed / done * (total - step) if done else None
    parts = [f"step {step}/{total} ({100 * step / max(total, 1):.0f}%)"]
    parts.append(
        f"{clock(elapsed)} elapsed" + (f", ~{clock(left)} left" if left is not None else "")
    )
    if "loss" in event:
        parts.append(f"loss {event['loss']:.4f}")
    if "query_dims" in event:
        parts.append(f"q/d dims {event['query_dims']:.0f}/{event['document_dims']:.0f}")
    if "samples_per_s" in event:
        parts.append(f"{event['samples_per_s']:.1f} samples/s")
    if "nDCG@10" in event:
        parts.append(f"val nDCG@10 {event['nDCG@10']:.4f}")
    line = "[train] " + " | ".join(parts)
    if sweep is not None and "runs" in sweep:  # trials side by side (sweep_begin)
        run, count = event.get("run"), sweep["count"]
        progress = dict(sweep["progress"])
        if run in sweep["runs"]:
            progress[run] = step / max(total, 1)
            which = f"variant {sweep['runs'].index(run) + 1}/{count} {sweep['variants'][run]}"
        else:
            which = "a variant"
        fraction = sum(progress.values()) / count
        spent = (now if now is not None else time.monotonic()) - sweep["start"]
        head = f"[sweep] {which}, step {step}/{total}, {sweep_counts(sweep)}"
        if fraction > 0:
            head += f", {minutes(spent / fraction - spent)} left for the sweep"
        line = head + " | " + line
    elif sweep is not None:
        index, count = sweep["index"], sweep["count"]
        fraction = (index - 1 + step / max(total, 1)) / count
        spent = (now if now is not None else time.monotonic()) - sweep["start"]
        head = f"[sweep] variant {index}/{count}, step {step}/{total}"
        if fraction > 0:
            head += f", {minutes(spent / fraction - spent)} left for the sweep"
        line = head + " | " + line
    return line


EVAL_PROGRESS_EVERY_S = 5.0
"""Rank 0 posts its validation's encoding progress at most this often."""


def throttled_eval_progress(step: int, every_s: float = EVAL_PROGRESS_EVERY_S):
    """A :attr:`SpladeEncoder.progress <spladeray.model.encoder.SpladeEncoder.progress>` hook
    for rank 0's validation at ``step``: posts ``{"kind": "eval", "state": "progress"}`` events
    at most every ``every_s`` seconds (and the end of each kind), so a long validation is not
    silence."""
    last = {"t": time.monotonic()}

    def hook(kind: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last["t"] < every_s:
            return
        last["t"] = now
        post(
            {"kind": "eval", "state": "progress", "step": step, "what": kind}
            | {"done": done, "total": total}
        )

    return hook


def eval_line(event: dict) -> str:
    """Rank 0's periodic validation: started (what it encodes), its encoding progress, or done
    (its figures)."""
    where = f"[train] validation at step {event['step']}"
    if event["state"] == "start":
        docs = f"{event['docs']:,} docs" if event.get("docs") else "the corpus"
        return f"{where}: encoding {docs} and its queries, then searching"
    if event["state"] == "progress":
        done, total = int(event["done"]), max(int(event["total"]), 1)
        return f"{where}: encoding {event['what']}s {100 * done // total}% ({done:,}/{total:,})"
    figures = ", ".join(
        f"{k} {v:.0f}" if "dims" in k else f"{k} {v:.4f}"
        for k, v in event.get("metrics", {}).items()
    )
    return f"{where}: {figures} ({event.get('seconds', 0.0):.0f} s)"


class Watcher(threading.Thread):
    """The driver's thread that drains the relay and prints (see the module docstring)."""

    def __init__(self, relay, *, interval_s: float = 1.0) -> None:
        super().__init__(name="spladeray-console", daemon=True)
        self.relay, self.interval_s = relay, interval_s
        self.tty = sys.stdout.isatty()
        self.lock = threading.Lock()
        self.last_print = time.monotonic()
        self.last_train_line = 0.0
        self.open_line = False  # a repainted line is on screen (terminal only)
        self.eval_started: float | None = None
        self.eval_progress: str | None = None  # the validation's last progress line
        self.stopped = threading.Event()

    def run(self) -> None:
        import ray

        while not self.stopped.wait(self.interval_s):
            try:
                self.drain_once()
            except Exception:  # a slow relay (a loaded machine) is tried again next time
                if not ray.is_initialized():  # Ray is down: the job is over
                    return
            self._heartbeat()

    def stop(self) -> None:
        """Print what is left and end the thread (before Ray shuts down)."""
        self.stopped.set()
        with contextlib.suppress(Exception):
            self.drain_once()

    def drain_once(self) -> None:
        import ray

        with self.lock:
            if not ray.is_initialized():  # never let ray.get start a new Ray instance
                return
            for event in ray.get(self.relay.drain.remote(), timeout=30):
                self.show(event)

    def _print(self, line: str, *, repaint: bool = False, stream=None) -> None:
        stream = stream or sys.stdout
        if self.open_line:
            sys.stdout.write("\n")
            self.open_line = False
        if repaint and self.tty:
            sys.stdout.write("\r" + line + "\x1b[K")  # clear what a longer line left
            self.open_line = True
        else:
            print(line, file=stream)
        stream.flush()
        self.last_print = time.monotonic()

    def show(self, event: dict) -> None:
        kind = event.get("kind")
        if kind == "log":
            self._print(event["line"], stream=sys.stderr)
        elif kind == "train":
            now = time.monotonic()
            last = int(event["step"]) >= int(event["max_steps"])
            due = (
                self.tty or last or "nDCG@10" in event or now - self.last_train_line >= LINE_EVERY_S
            )
            sweep = _state["sweep"]
            if sweep is not None and event.get("run") in sweep.get("runs", ()):
                sweep["progress"][event["run"]] = int(event["step"]) / max(
                    int(event["max_steps"]), 1
                )
            if due:
                # side-by-side trials each print their own lines: no repainting over each other
                side_by_side = sweep is not None and "runs" in sweep
                self._print(train_line(event, sweep), repaint=not (last or side_by_side))
                self.last_train_line = now
        elif kind == "eval":
            if event["state"] == "progress":  # a terminal repaints it; off one, the heartbeat
                self.eval_progress = eval_line(event)
                if self.tty:
                    self._print(self.eval_progress, repaint=True)
                return
            self.eval_started = time.monotonic() if event["state"] == "start" else None
            self.eval_progress = None
            self._print(eval_line(event))

    def _heartbeat(self) -> None:
        if self.tty:
            return
        with self.lock:
            now = time.monotonic()
            if now - self.last_print < HEARTBEAT_S:
                return
            if self.eval_started is not None:
                so_far = clock(now - self.eval_started)
                line = f"{self.eval_progress}, {so_far} so far" if self.eval_progress else None
                self._print(line or f"[train] validation: {so_far} so far")
            elif _state["stage"] is not None:
                name, start = _state["stage"]
                if self.last_train_line > start and now - self.last_train_line < 3 * HEARTBEAT_S:
                    return  # training lines are flowing: they carry their own clock
                self._print(f"[{name}] {clock(now - start)} elapsed")
