"""Plain-Python readers for BEIR directories (``corpus.jsonl``, ``queries.jsonl``, ``qrels/*.tsv``).

These stream line by line and report malformed rows instead of dropping them; the Ray Data
readers in :mod:`spladeray.data.readers` build on the same row checks. A BEIR directory is a
local path or a URI (``s3://bucket/beir/scifact``): files are streamed through
:mod:`spladeray.storage`, never downloaded whole.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from spladeray import storage


@dataclass
class Rejects:
    """Rows that could not be used, with the reason; never silently dropped."""

    rows: list[dict] = field(default_factory=list)

    def add(self, source: str, line: int, reason: str) -> None:
        self.rows.append({"source": source, "line": line, "reason": reason})

    def __len__(self) -> int:
        return len(self.rows)


def doc_text(doc: dict) -> str:
    """The text a document is encoded from: ``title`` and ``text`` joined (BEIR convention)."""
    title = (doc.get("title") or "").strip()
    text = (doc.get("text") or "").strip()
    return f"{title} {text}".strip() if title else text


def iter_jsonl(path: str | Path, rejects: Rejects | None = None) -> Iterator[tuple[int, dict]]:
    """``(line_number, object)`` for each valid JSON object line; bad lines go to ``rejects``."""
    with storage.open_text(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                if rejects is None:
                    raise ValueError(f"{path}:{n}: invalid JSON: {exc}") from None
                rejects.add(str(path), n, f"invalid JSON: {exc.msg}")
                continue
            if not isinstance(obj, dict):
                if rejects is None:
                    raise ValueError(f"{path}:{n}: expected a JSON object")
                rejects.add(str(path), n, "not a JSON object")
                continue
            yield n, obj


def iter_corpus(
    beir_dir: str | Path, limit: int | None = None, rejects: Rejects | None = None
) -> Iterator[dict]:
    """Documents ``{"_id", "title", "text"}``; rows without an id or any text are rejected."""
    path = storage.join(beir_dir, "corpus.jsonl")
    rows = _checked(path, iter_jsonl(path, rejects), rejects, ("title", "text"))
    return islice(rows, limit) if limit else rows


def load_queries(beir_dir: str | Path, rejects: Rejects | None = None) -> dict[str, str]:
    """``{query_id: text}``; empty queries are rejected."""
    path = storage.join(beir_dir, "queries.jsonl")
    return {
        row["_id"]: row["text"]
        for row in _checked(path, iter_jsonl(path, rejects), rejects, ("text",))
    }


def load_qrels(
    beir_dir: str | Path, split: str, rejects: Rejects | None = None
) -> dict[str, dict[str, int]]:
    """``{query_id: {doc_id: relevance}}`` from ``qrels/<split>.tsv`` (header line optional)."""
    path = storage.join(beir_dir, "qrels", f"{split}.tsv")
    check_qrels(path)
    qrels: dict[str, dict[str, int]] = {}
    with storage.open_text(path, newline="") as fh:
        for n, parts in enumerate(csv.reader(fh, delimiter="\t"), 1):
            if not parts or (n == 1 and parts[0] in ("query-id", "qid", "query_id")):
                continue
            try:
                qid, did, rel = parts[0], parts[1], int(parts[-1])
                if len(parts) not in (3, 4) or not qid or not did:
                    raise ValueError
            except (ValueError, IndexError):
                if rejects is None:
                    raise ValueError(f"{path}:{n}: expected query-id, corpus-id, score") from None
                rejects.add(str(path), n, "malformed qrels line")
                continue
            qrels.setdefault(qid, {})[did] = rel
    return qrels


def check_qrels(path: str | Path) -> None:
    """Raise ``FileNotFoundError`` naming the splits that exist when ``path`` is no qrels file."""
    if not storage.is_file(path):
        qrels_dir = os.path.dirname(str(path).rstrip("/"))
        available = sorted(
            f.removesuffix(".tsv") for f in storage.list_files(qrels_dir) if f.endswith(".tsv")
        )
        raise FileNotFoundError(f"{path} not found; splits available: {available}")


def _checked(
    path: str | Path, rows: Iterator[tuple[int, dict]], rejects: Rejects | None, text_keys: tuple
) -> Iterator[dict]:
    for n, row in rows:
        problem = None
        if not isinstance(row.get("_id"), str | int) or str(row.get("_id")).strip() == "":
            problem = "missing _id"
        elif not any(isinstance(row.get(k), str) and row[k].strip() for k in text_keys):
            problem = f"missing {' / '.join(text_keys)}"
        if problem:
            if rejects is None:
                raise ValueError(f"{path}:{n}: {problem}")
            rejects.add(str(path), n, problem)
            continue
        row["_id"] = str(row["_id"])
        yield row
