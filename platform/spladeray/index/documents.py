"""What a document must be before anything encodes or stores it: the one check of every write
path (``index/build.py``, the Ray Data bulk job ``index/bulk.py``, the Serve ``/index`` route,
evaluation's sparse retriever).

A document has a usable id (a non-empty string of at most 512 bytes; an integer id is taken as
its decimal string) and some text: ``title`` and ``text`` are each a string or absent, and at
least one of them is not blank. It is encoded from ``title`` and ``text`` joined (the BEIR
convention of :func:`spladeray.data.beir.doc_text`) and stores ``title``, ``text`` and any extra
fields it came with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spladeray.data.beir import doc_text
from spladeray.index.base import Failure, id_problem


@dataclass(frozen=True)
class Document:
    """A checked document, ready to encode (:attr:`encode_text`) and store (:meth:`fields`)."""

    id: str
    title: str = ""
    text: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def encode_text(self) -> str:
        """The text the document is encoded from: title and text joined."""
        return doc_text({"title": self.title, "text": self.text})

    def fields(self) -> dict[str, Any]:
        """The stored fields: extras first, then ``title`` and ``text``."""
        return {**self.extra, "title": self.title, "text": self.text}


def normalise_id(raw: Any) -> Any:
    """An integer id as its decimal string (JSON numbers are common ids); others unchanged."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)
    return raw


def document_problem(doc_id: Any, title: Any = None, text: Any = None) -> str | None:
    """Why a document cannot be indexed, or None when it can."""
    problem = id_problem(normalise_id(doc_id))
    if problem is not None:
        return problem
    if text is not None and not isinstance(text, str):
        return "text must be a string"
    if title is not None and not isinstance(title, str):
        return "title must be a string when given"
    if not ((text or "").strip() or (title or "").strip()):
        return "text is empty"
    return None


def check_document(
    doc_id: Any, title: Any = None, text: Any = None, extra: Mapping[str, Any] | None = None
) -> Document | Failure:
    """A :class:`Document`, or the :class:`Failure` (by id, with the reason) when it is unusable."""
    problem = document_problem(doc_id, title, text)
    if problem is None:
        problem = fields_problem({"title": title, "text": text, **dict(extra or {})})
    if problem is not None:
        return Failure("" if doc_id is None else printable(str(doc_id)), problem)
    return Document(normalise_id(doc_id), title or "", text or "", dict(extra or {}))


def printable(text: str) -> str:
    """``text`` with lone surrogates escaped (``\\ud800``), so that it can be echoed in JSON."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def fields_problem(fields: Mapping[str, Any]) -> str | None:
    """Why stored fields cannot be written (not strict JSON -- NaN and infinities included -- or
    strings that are not valid Unicode:
    JSON can carry lone surrogates that no tokenizer, UTF-8 store or backend accepts)."""
    try:
        json.dumps(fields, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        return "the document is not valid Unicode (a lone surrogate in a field)"
    except (TypeError, ValueError) as exc:
        return f"fields are not JSON-serialisable: {exc}"
    return None


def check_row(row: Any, id_key: str = "_id") -> Document | Failure:
    """A BEIR corpus row ``{"_id", "title", "text"}`` checked (other keys are not stored)."""
    if not isinstance(row, Mapping):
        return Failure("", f"a document must be a JSON object, got {type(row).__name__}")
    return check_document(row.get(id_key), row.get("title"), row.get("text"))
