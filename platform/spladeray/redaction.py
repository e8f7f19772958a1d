"""Credentials out of everything saved: a config dump before it becomes MLflow params, the Hub
model card's training config, or a manifest.

``${VAR}`` in a config can pull any secret into any string, and a config is saved verbatim in
several places. :func:`redact_config` walks a dumped config and replaces

- the value of a key that names a credential (``password``, ``secret``, ``token``, ``api_key``,
  ``access_key``, ``credential``; never a ``*_env`` key, which holds a variable's *name*);
- user info and query values of every URL in a string (:func:`spladeray.mlcommons.redact`:
  ``https://user:pass@host`` and pre-signed ``?X-Amz-Signature=...``);
- any occurrence of the value of an environment variable whose name says it is a secret
  (``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``, ``OPENSEARCH_PASSWORD``, ...), wherever ``${VAR}``
  put it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "REDACTED"
SECRET_NAME = re.compile(r"(pass(word|wd)?|secret|token|api_?key|access_?key|credential)", re.I)
"""A key or environment variable name that holds a credential."""
MIN_SECRET_CHARS = 6  # shorter env values ("1", "true") would redact ordinary text


def _secret_values(environ: Mapping[str, str]) -> list[str]:
    values = {v for k, v in environ.items() if SECRET_NAME.search(k) and len(v) >= MIN_SECRET_CHARS}
    return sorted(values, key=len, reverse=True)  # longest first: no partial leftovers


def redact_text(text: str, secrets: list[str]) -> str:
    from spladeray.mlcommons import redact

    for value in secrets:
        text = text.replace(value, REDACTED)
    return redact(text) if "://" in text else text


def redact_config(obj: Any, environ: Mapping[str, str] | None = None) -> Any:
    """A copy of ``obj`` (a dumped config: dicts, lists, scalars) with credentials redacted."""
    secrets = _secret_values(os.environ if environ is None else environ)

    def walk(value: Any, key: str = "") -> Any:
        if isinstance(value, Mapping):
            return {k: walk(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v, key) for v in value]
        if isinstance(value, str):
            if value and SECRET_NAME.search(key) and not key.endswith("_env"):
                return REDACTED
            return redact_text(value, secrets)
        return value

    return walk(obj)
