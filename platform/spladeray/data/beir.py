"""Plain-Python readers for BEIR directories (``corpus.jsonl``, ``queries.jsonl``, ``qrels/*.tsv``).

These stream line by line and report malformed rows instead of dropping them, each with its
file, line number and reason (:class:`Rejects`); no input makes them raise anything else --
any byte soup is rows or rejects, and every non-blank line is exactly one of the two (a qrels
header line excepted). The Ray Data readers in :mod:`spladeray.data.readers` build on the same
line parsing and row checks. A BEIR directory is a local path or a URI
(``s3://bucket/beir/scifact``): files are streamed through :mod:`spladeray.storage`, never
downloaded whole.
"""

from __future__ import annotations

import codecs
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


def _text(value) -> str:
    return value.strip() if isinstance(value, str) else ""


def doc_text(doc: dict) -> str:
    """The text a document is encoded from: ``title`` and ``text`` joined (BEIR convention).

    A field that is not a string counts as absent (the row checks reject such rows first)."""
    title = _text(doc.get("title"))
    text = _text(doc.get("text"))
    return f"{title} {text}".strip() if title else text


def parse_json_line(line: str) -> tuple[object, str | None]:
    """``(object, None)`` for a line of JSON, else ``(None, reason)``; never raises.

    Besides syntax errors this catches what ``json.loads`` raises on hostile input: nesting
    deep enough to exhaust the recursion limit, integers longer than Python's digit limit.
    """
    try:
        return json.loads(line), None
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg}"
    except RecursionError:
        return None, "invalid JSON: nested too deeply"
    except ValueError as exc:  # e.g. an integer beyond sys.get_int_max_str_digits()
        return None, f"invalid JSON: {exc}"


def iter_lines(path: str | Path) -> Iterator[tuple[int, str | None, str | None]]:
    """``(line number, text, None)`` or ``(line number, None, reason)`` per non-blank line.

    Lines end at ``\n`` only (as editors and ``wc -l`` count them), each decoded as UTF-8 on
    its own: one bad byte rejects its line, not the file. A UTF-8 byte-order mark opening the
    file is skipped.
    """
    with storage.open_binary(path) as fh:
        for n, raw in enumerate(fh, 1):
            if n == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                if raw.strip():
                    yield n, None, f"not valid UTF-8 (byte {exc.start} of the line)"
                continue
            if line.strip():
                yield n, line, None


def iter_jsonl(path: str | Path, rejects: Rejects | None = None) -> Iterator[tuple[int, dict]]:
    """``(line_number, object)`` for each valid JSON object line; bad lines go to ``rejects``
    (or raise ``ValueError`` naming the file and line when ``rejects`` is None)."""
    for n, line, problem in iter_lines(path):
        obj = None
        if problem is None:
            obj, problem = parse_json_line(line)  # type: ignore[arg-type]
        if problem is None and not isinstance(obj, dict):
            problem = "not a JSON object"
        if problem is not None:
            _reject(path, n, problem, rejects)
            continue
        yield n, obj  # type: ignore[misc]


def iter_corpus(
    beir_dir: str | Path, limit: int | None = None, rejects: Rejects | None = None
) -> Iterator[dict]:
    """Documents ``{"_id", "title", "text"}``; rows without an id or any text are rejected."""
    path = storage.join(beir_dir, "corpus.jsonl")
    rows = (row for _, row in _checked(path, iter_jsonl(path, rejects), rejects, ("title", "text")))
    return islice(rows, limit) if limit else rows


def load_queries(beir_dir: str | Path, rejects: Rejects | None = None) -> dict[str, str]:
    """``{query_id: text}``; empty queries are rejected. A query id seen again with another text
    is rejected (the first is kept, the message names its line); an exact repeat changes nothing
    and is skipped."""
    path = storage.join(beir_dir, "queries.jsonl")
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for n, row in _checked(path, iter_jsonl(path, rejects), rejects, ("text",)):
        qid = row["_id"]
        if qid not in queries:
            queries[qid], first_line[qid] = row["text"], n
        elif queries[qid] != row["text"]:
            _reject(
                path,
                n,
                f"query id {qid!r} repeated with another text (first on line "
                f"{first_line[qid]}, kept)",
                rejects,
            )
    return queries


def load_qrels(
    beir_dir: str | Path, split: str, rejects: Rejects | None = None
) -> dict[str, dict[str, int]]:
    """``{query_id: {doc_id: relevance}}`` from ``qrels/<split>.tsv`` (header line optional)."""
    path = storage.join(beir_dir, "qrels", f"{split}.tsv")
    qrels: dict[str, dict[str, int]] = {}
    first_line: dict[tuple[str, str], int] = {}
    for n, qid, did, rel in iter_qrels(path, rejects):
        judged = qrels.setdefault(qid, {})
        if did not in judged:
            judged[did], first_line[qid, did] = rel, n
        elif judged[did] != rel:
            _reject(
                path,
                n,
                f"({qid}, {did}) judged again as {rel} (first on line "
                f"{first_line[qid, did]} as {judged[did]}, kept)",
                rejects,
            )
    return qrels


QRELS_HEADERS = ("query-id", "qid", "query_id")


def iter_qrels(
    path: str | Path, rejects: Rejects | None = None
) -> Iterator[tuple[int, str, str, int]]:
    """``(line, query_id, doc_id, relevance)`` per line of a qrels TSV: ``query-id<TAB>corpus-id
    <TAB>score`` (or 4 columns, TREC style; the score is the last). A header line is skipped;
    malformed lines go to ``rejects`` (or raise ``ValueError`` with file and line).

    Lines are split on tabs, not parsed as CSV: qrels have no quoting, and a stray quote must
    not swallow the following lines.
    """
    check_qrels(path)
    for n, line, problem in iter_lines(path):
        if problem is None:
            parts = [p.strip() for p in line.rstrip("\r\n").split("\t")]  # type: ignore[union-attr]
            if n == 1 and parts[0] in QRELS_HEADERS:
                continue
            problem = _qrels_problem(parts)
        if problem is not None:
            _reject(path, n, problem, rejects)
            continue
        yield n, parts[0], parts[1], int(parts[-1])


def check_qrels(path: str | Path) -> None:
    """Raise ``FileNotFoundError`` naming the splits that exist when ``path`` is no qrels file."""
    if not storage.is_file(path):
        qrels_dir = os.path.dirname(str(path).rstrip("/"))
        available = sorted(
            f.removesuffix(".tsv") for f in storage.list_files(qrels_dir) if f.endswith(".tsv")
        )
        raise FileNotFoundError(f"{path} not found; splits available: {available}")


def _qrels_problem(parts: list[str]) -> str | None:
    if len(parts) not in (3, 4) or not parts[0] or not parts[1]:
        return "malformed qrels line: expected query-id, corpus-id, score"
    try:
        int(parts[-1])
    except ValueError:
        return f"malformed qrels line: score {parts[-1][:20]!r} is not an integer"
    return None


def _checked(
    path: str | Path, rows: Iterator[tuple[int, dict]], rejects: Rejects | None, text_keys: tuple
) -> Iterator[tuple[int, dict]]:
    for n, row in rows:
        problem = None
        doc_id = row.get("_id")
        if isinstance(doc_id, bool) or not isinstance(doc_id, str | int) or not str(doc_id).strip():
            problem = "missing _id"
        elif any(row.get(k) is not None and not isinstance(row[k], str) for k in text_keys):
            problem = f"{' / '.join(text_keys)} must be strings"
        elif not any(isinstance(row.get(k), str) and row[k].strip() for k in text_keys):
            problem = f"missing {' / '.join(text_keys)}"
        if problem:
            _reject(path, n, problem, rejects)
            continue
        row["_id"] = str(row["_id"])
        yield n, row


def _reject(path: str | Path, line: int, problem: str, rejects: Rejects | None) -> None:
    """Count a bad line in ``rejects``, or raise ``ValueError`` naming file and line."""
    if rejects is None:
        raise ValueError(f"{path}:{line}: {problem}")
    rejects.add(str(path), line, problem)
