"""Bounded teardown of session resources (Ray, Serve, osmem, moto).

A CI run once spent its remaining budget after the last test had passed, in the session's
teardown. Each shutdown here gets :data:`TEARDOWN_S`; one that does not return is named on stderr
and recorded in :data:`hung`, and ``tests/conftest.py`` then ends the session with ``os._exit``
and the session's exit status once the summary is printed.
"""

from __future__ import annotations

import sys
import threading

TEARDOWN_S = 120.0
"""Longest wait for one shutdown of a session resource (seen: 35 s on a loaded 2-core machine)."""

hung: list[str] = []
"""What did not shut down in time (conftest's ``pytest_unconfigure`` reads it)."""


def bounded(what: str, stop) -> None:
    """Run ``stop`` for at most :data:`TEARDOWN_S`. A CI run once spent its remaining budget after
    the last test had passed, in the session's teardown; one that does not return in time is
    named on stderr, and the session then ends with ``os._exit`` (see ``pytest_unconfigure``) so
    that a shutdown stuck in native code cannot hold the run. Errors are reported, not raised:
    every test has already run."""

    def run() -> None:
        try:
            stop()
        except Exception as exc:  # reported; the teardown goes on
            sys.stderr.write(f"\n[teardown] {what} failed: {exc!r}\n")

    thread = threading.Thread(target=run, name=f"teardown {what}", daemon=True)
    thread.start()
    thread.join(TEARDOWN_S)
    if thread.is_alive():
        sys.stderr.write(f"\n[teardown] {what} did not return in {TEARDOWN_S:.0f} s\n")
        hung.append(what)
