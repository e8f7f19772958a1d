"""Quieter Ray worker logs: the repeats of one known Ray Train warning are dropped at the source.

Ray Train V2 starts a detached ``PlacementGroupCleaner`` actor per run (ray-project/ray#58515)
whose monitor thread asks the State API once a second whether the Train controller is alive.
Each failed query logs ``Failed to query Ray Train Controller actor state. State API may be
temporarily unavailable. Continuing to monitor.`` and polls again, so a 40-minute job under an
unavailable State API forwards some 2,400 of them to the driver (docs/train.md). Ray 2.60 has no
setting for the poll or the message, and a level set in the driver does not reach the actor's
process. :func:`quiet_ray_train_logs` runs in every worker process of the jobs we start or join
(a ``worker_process_setup_hook``, :func:`worker_runtime_env`) and puts a :class:`RepeatFilter`
on the cleaner's logger: the first warning and then one per :data:`REPEAT_INTERVAL_S` (with the
number dropped) go through; the cleaner's other messages, e.g. that it removed a placement
group, are untouched.

On the quiet console (:mod:`spladeray.console`) the hook also puts a :class:`RelayHandler` on the
``spladeray`` logger of every worker: its WARNING and ERROR records go to the driver's console
through the relay actor that ``$SPLADERAY_CONSOLE_RELAY`` names (Ray's own forwarding of worker
output, ``log_to_driver``, is off there).

This module imports only the standard library (and Ray, lazily) and is pickled by value, so worker
processes run the hook without importing ``spladeray`` (a cluster whose nodes lack the package
still starts).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
REPEATED_WARNING = "Failed to query Ray Train Controller actor state"
REPEAT_INTERVAL_S = 600.0
RELAY_ENV = "SPLADERAY_CONSOLE_RELAY"
"""The name of the job's console relay actor (set in the job's runtime_env by the quiet console)."""
RELAY_NAMESPACE = "spladeray"
RELAY_RETRY_S = 30.0
RELAY_WAIT_S = 10.0

_relay: dict = {"name": None, "handle": None, "checked": 0.0}


def relay_handle():
    """The console relay actor of this job, or ``None`` (no relay configured, or not found: then
    asked again at most every :data:`RELAY_RETRY_S`)."""
    name = os.environ.get(RELAY_ENV)
    if not name:
        return None
    if _relay["name"] == name and _relay["handle"] is not None:
        return _relay["handle"]
    now = time.monotonic()
    if _relay["name"] == name and now - _relay["checked"] < RELAY_RETRY_S:
        return None
    _relay.update(name=name, handle=None, checked=now)
    try:
        import ray

        _relay["handle"] = ray.get_actor(name, namespace=RELAY_NAMESPACE)
    except Exception:  # not started (yet), or Ray is going down
        pass
    return _relay["handle"]


class RelayHandler(logging.Handler):
    """Sends each record, formatted, to the console relay, and waits (at most
    :data:`RELAY_WAIT_S`) until the relay holds it: a warning is on its way to the console
    before the task or actor call that logged it returns."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            handle = relay_handle()
            if handle is not None:
                line = f"{record.levelname} {record.name}: {record.getMessage()}"
                if record.exc_info:
                    line += "\n" + logging.Formatter().formatException(record.exc_info)
                import ray

                ray.get(handle.put.remote({"kind": "log", "line": line}), timeout=RELAY_WAIT_S)
        except Exception:
            self.handleError(record)


class RepeatFilter(logging.Filter):
    """Passes a record whose message starts with ``prefix`` at most once per ``interval_s``
    (the passed one says how many were dropped before it); every other record passes."""

    def __init__(self, prefix: str, interval_s: float) -> None:
        super().__init__()
        self.prefix, self.interval_s = prefix, interval_s
        self.dropped, self._last = 0, None

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(self.prefix):
            return True
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval_s:
            self.dropped += 1
            return False
        if self.dropped:
            record.msg, record.args = f"{message} ({self.dropped} more not shown)", ()
        self._last, self.dropped = now, 0
        return True


def quiet_ray_train_logs() -> None:
    """``worker_process_setup_hook``: the cleaner's repeated warning at most once per interval."""
    logger = logging.getLogger(CLEANER_LOGGER)
    if not any(getattr(f, "prefix", None) == REPEATED_WARNING for f in logger.filters):
        logger.addFilter(RepeatFilter(REPEATED_WARNING, REPEAT_INTERVAL_S))


def worker_setup() -> None:
    """``worker_process_setup_hook``: :func:`quiet_ray_train_logs`, and on the quiet console a
    :class:`RelayHandler` for the ``spladeray`` logger's warnings and errors."""
    quiet_ray_train_logs()
    if os.environ.get(RELAY_ENV):
        logger = logging.getLogger("spladeray")
        if not any(isinstance(h, RelayHandler) for h in logger.handlers):
            handler = RelayHandler(level=logging.WARNING)
            logger.addHandler(handler)


def worker_runtime_env() -> dict:
    """The job-level ``runtime_env`` for ``ray.init``: :func:`worker_setup` as the
    worker setup hook, or nothing when a submitted job (``ray job submit``) already sets one,
    since Ray refuses to merge two."""
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    if (job.get("runtime_env") or {}).get("worker_process_setup_hook"):
        return {}
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return {"worker_process_setup_hook": worker_setup}
