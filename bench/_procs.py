"""Processes of the local Ray cluster this benchmark started: CPU seconds and RSS from /proc.

The cluster's workers (Serve's proxy, the replicas) are descendants of this process (``ray.init``
starts the raylet as a child), so other Ray clusters on the same machine are never counted.
Linux only (``/proc``); elsewhere every figure is ``None``.
"""

from __future__ import annotations

import os
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def descendants(root: int | None = None) -> dict[int, str]:
    """pid -> command line of every process under ``root`` (default: this one)."""
    root = root or os.getpid()
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out[child] = _cmdline(child)
            todo.append(child)
    return out


def find(prefix: str) -> list[int]:
    """Descendant pids whose command line starts with ``prefix`` (e.g. ``ray::ProxyActor``)."""
    return sorted(pid for pid, cmd in descendants().items() if cmd.startswith(prefix))


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` so far."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / TICK if fields else None


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` now."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None
