"""Run a command with variables from dotenv files, read literally: ``python -m spladeray.envfile
FILE... -- COMMAND ARGS...`` (cluster.yaml's start commands: ``ray start`` with the secrets file).

A shell's ``. secrets.env`` would expand ``$`` and backticks in a password (and run a command in
one); here a line ``KEY=VALUE`` sets ``KEY`` to ``VALUE`` exactly, with one pair of surrounding
quotes removed. Blank lines and ``#`` comments are skipped, ``export KEY=VALUE`` is accepted, a
missing file is skipped (like ``[ -f FILE ] && . FILE``), and any other line is an error that
names the file and line, never the value.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def parse(text: str, source: str = "<env>") -> dict[str, str]:
    """``KEY=VALUE`` pairs of a dotenv text, values literal (no expansion of any kind)."""
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise ValueError(f"{source}:{number}: not a KEY=VALUE line")
        key, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        raise SystemExit("usage: python -m spladeray.envfile FILE... -- COMMAND [ARGS...]")
    split = argv.index("--")
    files, command = argv[:split], argv[split + 1 :]
    for name in files:
        path = Path(name).expanduser()
        if path.is_file():
            os.environ.update(parse(path.read_text(), str(path)))
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
