"""Ray Data readers for prepare: BEIR corpora and (query, positive[, negatives]) pair files.

Every reader yields rows with a ``reject`` column: ``null`` for a usable row, else the reason.
Nothing is dropped here; the caller writes rejected rows to ``rejects.jsonl``.

- :func:`beir_corpus_dataset`: ``corpus.jsonl`` -> ``doc_id, text, reject, raw`` (streamed).
- :func:`pairs_dataset`: jsonl / parquet / Hugging Face ``datasets`` -> ``query_id, query,
  positive_id, positive, negative_ids, negatives, reject, raw``. Missing ids are derived from the
  text (:func:`text_id`), so the same text always gets the same id.
- :func:`iter_qrels` and :func:`iter_queries`: the (small) BEIR qrels and queries, read in the
  driver with line numbers.
- :func:`read_beir` and :func:`read_pairs`: prepare's read step (the doc store, the accepted
  pairs, every reject in :class:`RejectLog`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from spladeray import storage
from spladeray.data import schema
from spladeray.data.beir import doc_text, iter_jsonl, parse_json_line
from spladeray.data.beir import iter_qrels as beir_iter_qrels
from spladeray.data.docstore import DocStore, DocStoreWriter

STR_LIST = pa.list_(pa.string())
CORPUS_SCHEMA = pa.schema(
    [("doc_id", pa.string()), ("text", pa.string()), ("reject", pa.string()), ("raw", pa.string())]
)
PAIRS_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("query", pa.string()),
        ("positive_id", pa.string()),
        ("positive", pa.string()),
        ("negative_ids", STR_LIST),
        ("negatives", STR_LIST),
        ("reject", pa.string()),
        ("raw", pa.string()),
    ]
)
RAW_CHARS = 300


def text_id(text: str) -> str:
    """A stable id for a text without one: the first 16 hex digits of its SHA-1."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _clean(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _raw(obj: Any) -> str:
    text = obj if isinstance(obj, str) else json.dumps(obj, default=str, ensure_ascii=False)
    return text[:RAW_CHARS]


# ---------------------------------------------------------------------------- text lines
RANGE_BYTES = 128 * 1024 * 1024
"""Bytes per read task: a file is read as ranges of about this size, in parallel."""
_TAIL_CHUNK = 1024 * 1024  # a range's last line is read on past its end in chunks of this size


def read_text_lines(uri: str | Path, *, range_bytes: int = RANGE_BYTES, file_extensions=None):
    """Lines of text files as a Ray Dataset: ``text`` and ``problem`` ("" or why the line is
    unusable).

    Each file is cut into byte ranges of about ``range_bytes``, each read by its own Ray task (a
    file of any size streams, in parallel; no task holds more than a range). A line belongs to
    the range its first byte is in; the range reads on past its end to finish its last line.
    Line numbers are global: a first, cheap pass counts the newlines of each range (in C), so
    each range knows the number of its first line. Each line (ending at ``\n``; a final line
    without one counts; ``\r\n`` is stripped; a UTF-8 byte-order mark at the start of a file is
    dropped) is decoded on its own: an undecodable one becomes a reject (``problem`` names the
    file, line and byte) that the parsers below turn into a reject row, instead of failing the
    job as ``ray.data.read_text`` would. Rows and problems are identical to reading the whole
    file at once (:func:`_split_lines`; tests/data/test_streaming_reader.py cuts files at every
    awkward byte).

    ``uri`` is a file or folder: a local path or a URI (``s3://bucket/prefix``), read through
    :func:`spladeray.storage.resolve`'s filesystem by whichever node runs the task.
    """
    import ray.data

    ranges = _ranges(uri, range_bytes, file_extensions)
    if not ranges:
        raise FileNotFoundError(f"no files to read at {uri}")
    counts = ray.data.from_items(ranges).map(_count_range).take_all()
    first, seen = {}, {}
    for row in sorted(counts, key=lambda r: (r["path"], r["start"])):  # newlines before each
        first[(row["path"], row["start"])] = seen.get(row["path"], 0)
        seen[row["path"]] = seen.get(row["path"], 0) + row["newlines"]
    for r in ranges:
        r["newlines_before"] = first[(r["path"], r["start"])]
    return ray.data.from_items(ranges, override_num_blocks=len(ranges)).map_batches(
        _read_batch, batch_size=1, batch_format="pyarrow"
    )


def _ranges(uri, range_bytes: int, extensions) -> list[dict[str, Any]]:
    """``{uri, path, start, end}`` for each range of each file at ``uri`` (a file or folder)."""
    names = storage.list_files(uri)
    out = []
    for name in names:
        if extensions and name and not any(name.endswith("." + e) for e in extensions):
            continue
        file_uri = storage.join(uri, name) if name else str(uri)
        fs, path = storage.resolve(file_uri)
        size = fs.get_file_info(path).size
        for start in range(0, max(size, 1), range_bytes):
            end = min(start + range_bytes, size)
            out.append({"uri": file_uri, "path": path, "start": start, "end": end})
    return out


def _count_range(r: dict[str, Any]) -> dict[str, Any]:
    fs, path = storage.resolve(r["uri"])
    with fs.open_input_file(path) as f:
        data = f.read_at(r["end"] - r["start"], r["start"]) if r["end"] > r["start"] else b""
    return {"path": r["path"], "start": r["start"], "newlines": data.count(b"\n")}


def read_range(uri: str, start: int, end: int, newlines_before: int) -> tuple[list, int]:
    """The lines whose first byte is in ``[start, end)`` of one file, as ``(bytes, number)``,
    and the number of the first. ``newlines_before``: newlines in ``[0, start)``."""
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        size = f.size()
        begin = start
        if start > 0:  # the line in progress at ``start`` belongs to the range before
            prev = f.read_at(1, start - 1)
            if prev != b"\n":
                begin = _next_line(f, start, size)
                newlines_before += 1
        if begin >= end or begin >= size:
            return [], newlines_before + 1
        data = f.read_at(end - begin, begin)
        if not data.endswith(b"\n") and end < size:  # finish the last line
            stop = _next_line(f, end, size)
            data += f.read_at(stop - end, end)
    pieces = data.split(b"\n")
    if pieces and not pieces[-1]:  # the newline ending the last line opens no new line
        pieces.pop()
    return pieces, newlines_before + 1


def _next_line(f, pos: int, size: int) -> int:
    """The offset just after the first ``\n`` at or after ``pos`` (``size`` when none)."""
    while pos < size:
        chunk = f.read_at(min(_TAIL_CHUNK, size - pos), pos)
        cut = chunk.find(b"\n")
        if cut >= 0:
            return pos + cut + 1
        pos += len(chunk)
    return size


def _read_batch(batch: pa.Table) -> pa.Table:
    texts, problems = [], []
    for r in batch.to_pylist():
        pieces, first = read_range(r["uri"], r["start"], r["end"], r["newlines_before"])
        for text, problem in _decode(pieces, first, r["path"]):
            texts.append(text)
            problems.append(problem)
    return pa.table(
        {"text": pa.array(texts, pa.string()), "problem": pa.array(problems, pa.string())}
    )


def _decode(pieces: list[bytes], first: int, path: str) -> Iterator[tuple[str, str]]:
    """``(text, problem)`` per line; line ``first`` is the first piece's number."""
    for n, raw in enumerate(pieces, first):
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
            raw = raw[3:]
        try:
            yield raw.decode("utf-8").rstrip("\r"), ""
        except UnicodeDecodeError as exc:
            yield "", f"{path}:{n}: not valid UTF-8 (byte {exc.start} of the line)"


def _split_lines(row: dict[str, Any]) -> list[dict[str, str]]:
    """A whole file's bytes (``row["bytes"]``, ``row["path"]``) as lines: what the ranges of
    :func:`read_text_lines` add up to (the reference the tests compare them with)."""
    pieces = row["bytes"].split(b"\n")
    if pieces and not pieces[-1]:  # the newline ending the last line opens no new line
        pieces.pop()
    return [{"text": t, "problem": p} for t, p in _decode(pieces, 1, row["path"])]


def _lines(batch: pa.Table) -> Iterator[tuple[str, str | None]]:
    """``(text, problem or None)`` per line of a :func:`read_text_lines` (or ``read_text``)
    batch."""
    texts = batch.column("text").to_pylist()
    problems = (
        batch.column("problem").to_pylist()
        if "problem" in batch.column_names
        else [None] * len(texts)
    )
    return zip(texts, [p or None for p in problems], strict=True)


# ---------------------------------------------------------------------------- BEIR corpus
def parse_corpus_lines(batch: pa.Table) -> pa.Table:
    """Text lines -> corpus rows; bad bytes, bad JSON, no ``_id`` or no text become rejects."""
    rows = []
    for line, undecodable in _lines(batch):
        if undecodable is not None:
            rows.append((None, None, undecodable, None))
            continue
        if not line.strip():
            continue
        obj, problem = parse_json_line(line)
        if problem is not None:
            rows.append((None, None, problem, _raw(line)))
            continue
        if not isinstance(obj, dict):
            rows.append((None, None, "not a JSON object", _raw(line)))
            continue
        doc_id = obj.get("_id")
        strings = all(obj.get(k) is None or isinstance(obj[k], str) for k in ("title", "text"))
        text = doc_text(obj) if strings else ""
        if isinstance(doc_id, bool) or not isinstance(doc_id, str | int) or not str(doc_id).strip():
            rows.append((None, None, "corpus row without _id", _raw(line)))
        elif not strings:
            rows.append((str(doc_id), None, "title / text must be strings", _raw(line)))
        elif not text:
            rows.append((str(doc_id), None, "document without text", _raw(line)))
        else:
            rows.append((str(doc_id), text, None, None))
    cols = list(zip(*rows, strict=True)) if rows else [[], [], [], []]
    return pa.Table.from_arrays([pa.array(c, pa.string()) for c in cols], schema=CORPUS_SCHEMA)


def beir_corpus_dataset(beir_dir: str | Path):
    """``corpus.jsonl`` of a BEIR directory as a Ray Dataset of checked rows."""
    path = storage.join(beir_dir, "corpus.jsonl")
    if not storage.is_file(path):
        raise FileNotFoundError(f"{path} not found (expected a BEIR directory)")
    return read_text_lines(path).map_batches(
        parse_corpus_lines, batch_format="pyarrow", batch_size=4096
    )


# ---------------------------------------------------------------------------- BEIR queries, qrels
class _Sink:
    """Adapts :mod:`spladeray.data.beir`'s ``rejects.add(source, line, reason)`` to a
    ``reject(source, line, reason, id=None, raw=None)`` callable."""

    def __init__(self, reject) -> None:
        self.add = lambda source, line, reason: reject(source, line, reason)


def iter_queries(beir_dir: str | Path, reject) -> Iterator[tuple[str, str]]:
    """``(query_id, text)``; bad rows go to ``reject(source, line, reason, id=None, raw=None)``."""
    path = storage.join(beir_dir, "queries.jsonl")
    for n, obj in iter_jsonl(path, _Sink(reject)):
        qid, text = obj.get("_id"), _clean(obj.get("text"))
        if isinstance(qid, bool) or not isinstance(qid, str | int) or str(qid).strip() == "":
            reject(str(path), n, "query without _id", raw=_raw(obj))
        elif text is None:
            reject(str(path), n, "empty query", id=str(qid), raw=_raw(obj))
        else:
            yield str(qid), text


def iter_qrels(path: str | Path, reject) -> Iterator[tuple[int, str, str, int]]:
    """``(line, query_id, doc_id, relevance)`` from a qrels TSV (header line optional); bad lines
    go to ``reject`` (see :func:`spladeray.data.beir.iter_qrels`)."""
    return beir_iter_qrels(path, _Sink(reject))


# ---------------------------------------------------------------------------- pair files
def _pair_record(row: dict[str, Any]) -> dict[str, Any]:
    """One source row (our column names) -> a :data:`PAIRS_SCHEMA` record, maybe a reject."""
    query, positive = _clean(row.get("query")), _clean(row.get("positive"))
    negatives = row.get("negatives")
    negatives = [] if negatives is None else negatives
    reason = None
    if query is None:
        reason = "missing query text"
    elif positive is None:
        reason = "missing positive text"
    elif not isinstance(negatives, list) or any(_clean(n) is None for n in negatives):
        reason = "negatives must be a list of non-empty strings"
    if reason:
        record = dict.fromkeys(PAIRS_SCHEMA.names)
        record.update(reject=reason, raw=_raw(row))
        return record
    negatives = [n.strip() for n in negatives]
    return {
        "query_id": str(row.get("query_id") or text_id(query)),
        "query": query,
        "positive_id": str(row.get("positive_id") or text_id(positive)),
        "positive": positive,
        "negative_ids": [text_id(n) for n in negatives],
        "negatives": negatives,
        "reject": None,
        "raw": None,
    }


def _records_table(records: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(records, schema=PAIRS_SCHEMA)


def normalize_pairs(batch: pa.Table, columns: dict[str, str]) -> pa.Table:
    """Source rows -> :data:`PAIRS_SCHEMA`, using ``columns`` (our name -> source name)."""
    data = {
        ours: batch.column(theirs).to_pylist()
        for ours, theirs in columns.items()
        if theirs in batch.column_names
    }
    rows = [{k: v[i] for k, v in data.items()} for i in range(batch.num_rows)]
    return _records_table([_pair_record(row) for row in rows])


def parse_pairs_lines(batch: pa.Table, columns: dict[str, str]) -> pa.Table:
    """Text lines of a jsonl pairs file -> :data:`PAIRS_SCHEMA`; bad lines are rejects."""
    records = []
    for line, undecodable in _lines(batch):
        if undecodable is not None:
            record = dict.fromkeys(PAIRS_SCHEMA.names)
            record.update(reject=undecodable)
            records.append(record)
            continue
        if not line.strip():
            continue
        obj, problem = parse_json_line(line)
        if not isinstance(obj, dict):
            reason = problem or "not an object"
            record = dict.fromkeys(PAIRS_SCHEMA.names)
            record.update(reject=reason, raw=_raw(line))
            records.append(record)
            continue
        records.append(_pair_record({ours: obj.get(theirs) for ours, theirs in columns.items()}))
    return _records_table(records)


def _hf_blocks(source, rows_per_block: int = 10_000) -> list[pa.Table]:
    """A Hugging Face dataset split as Arrow blocks (zero-copy slices of its memory-mapped cache).

    ``ray.data.from_huggingface`` would ask the hub for parquet exports first, which fails offline.
    """
    import datasets

    name = source.hf_name or (str(source.path) if source.path else None)
    if name is None:
        raise ValueError("prepare.source: format hf needs hf_name (hub id or local folder)")
    if Path(name).is_dir() and (Path(name) / "state.json").is_file():
        ds = datasets.load_from_disk(name)  # a folder written by Dataset.save_to_disk
    else:
        ds = datasets.load_dataset(name, source.hf_config, split=source.split)
    table = ds.with_format("arrow")[:]
    return [
        table.slice(s, rows_per_block) for s in range(0, max(table.num_rows, 1), rows_per_block)
    ]


def pairs_dataset(source):
    """A :class:`~spladeray.config.PrepareSourceConfig` of format jsonl / parquet / hf as a Dataset."""
    import ray.data

    columns = dict(source.columns)
    if source.format == "jsonl":
        ds = read_text_lines(source.path, file_extensions=["jsonl", "json"])
        return ds.map_batches(parse_pairs_lines, fn_kwargs={"columns": columns}, **_ARROW)
    if source.format == "parquet":
        fs, path = storage.resolve(source.path)
        ds = ray.data.read_parquet(path, filesystem=fs)
    elif source.format == "hf":
        ds = ray.data.from_arrow(_hf_blocks(source))
    else:
        raise ValueError(f"pairs_dataset does not read format {source.format!r}")
    return ds.map_batches(normalize_pairs, fn_kwargs={"columns": columns}, **_ARROW)


_ARROW = {"batch_format": "pyarrow", "batch_size": 4096}
_PAIR_KEYS = list(schema.PAIR_COLUMNS)[:4]  # query_id, query, positive_id, positive


# ---------------------------------------------------------------------------- prepare's read step
class RejectLog:
    """Writes ``rejects.jsonl`` as rejects arrive and counts them by reason."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.by_reason: Counter[str] = Counter()

    def add(self, source: str, line: int | None, reason: str, id=None, raw=None) -> None:
        row = {"source": source, "line": line, "id": id, "reason": reason, "raw": raw}
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.by_reason[reason.split(" (")[0]] += 1

    def __len__(self) -> int:
        return sum(self.by_reason.values())

    def close(self) -> None:
        self._fh.close()


@dataclass
class SourceData:
    pairs: pa.Table
    counts: dict = field(default_factory=dict)


ROW_COLUMNS = {"positive_row": pa.int64(), "given_negative_rows": pa.list_(pa.int64())}
"""Doc store rows the miners read texts and scores by (they hold no ``id -> row`` dict)."""


def _pairs_table(pairs: list[dict]) -> pa.Table:
    by_query: dict[str, list[str]] = defaultdict(list)
    for p in pairs:
        by_query[p["query_id"]].append(p["positive_id"])
    for p in pairs:
        p["query_positive_ids"] = by_query[p["query_id"]]
        p.setdefault("given_negative_ids", [])
        p.setdefault("given_negative_rows", [])
    columns = [*_PAIR_KEYS, "query_positive_ids"]
    fields = [pa.field(c, schema.PAIR_COLUMNS[c]) for c in columns]
    fields.append(pa.field("given_negative_ids", schema.STRING_LIST))
    fields += [pa.field(c, t) for c, t in ROW_COLUMNS.items()]
    return pa.Table.from_pylist(pairs, schema=pa.schema(fields))


class _QueryLimit:
    """``holdout`` then ``max_queries``: keep the queries of the holdout's part (all without
    one), and of those the first N distinct; count (not reject) the rest."""

    def __init__(self, limit: int | None, holdout=None) -> None:
        self.limit, self.kept, self.skipped = limit, set(), 0
        self.holdout, self.held_out = holdout, 0

    def allows(self, qid: str) -> bool:
        if self.holdout is not None:
            from spladeray.data.split import in_part

            h = self.holdout
            if not in_part(qid, h.part, h.fraction, h.seed):
                self.held_out += 1
                return False
        if self.limit is None or qid in self.kept or len(self.kept) < self.limit:
            self.kept.add(qid)
            return True
        self.skipped += 1
        return False


def read_beir(source, work: Path, rejects: RejectLog) -> SourceData:
    """Queries and qrels in the driver; the corpus streamed through Ray Data into the doc store."""
    beir = source.path
    queries: dict[str, str] = {}
    for qid, text in iter_queries(beir, rejects.add):
        if qid in queries:
            rejects.add(storage.join(beir, "queries.jsonl"), None, "duplicate query id", id=qid)
        else:
            queries[qid] = text
    corpus_path = storage.join(beir, "corpus.jsonl")
    with DocStoreWriter(work / "corpus.arrow") as store:
        for batch in beir_corpus_dataset(beir).iter_batches(batch_format="pyarrow"):
            for row in batch.filter(batch.column("reject").is_valid()).to_pylist():
                rejects.add(corpus_path, None, row["reject"], id=row["doc_id"], raw=row["raw"])
            ok = batch.filter(batch.column("reject").is_null())
            ids = ok.column("doc_id").to_pylist()
            for i in store.add(ids, ok.column("text").to_pylist()):
                rejects.add(corpus_path, None, "duplicate _id", id=ids[i])
        docs = len(store)
        qrels_path = storage.join(beir, "qrels", f"{source.split}.tsv")
        pairs, seen, limit, lines = [], set(), _QueryLimit(source.max_queries, source.holdout), 0
        for n, qid, did, rel in iter_qrels(qrels_path, rejects.add):
            lines += 1
            bad = None
            if rel < source.min_relevance:
                bad = f"relevance {rel} below min_relevance {source.min_relevance}"
            elif qid not in queries:
                bad = f"unknown query id {qid} (missing from queries.jsonl or rejected there)"
            elif did not in store:
                bad = f"unknown corpus id {did} (missing from corpus.jsonl or rejected there)"
            elif (qid, did) in seen:
                bad = "duplicate qrels pair"
            if bad:
                rejects.add(str(qrels_path), n, bad, id=f"{qid}\t{did}")
            elif limit.allows(qid):
                seen.add((qid, did))
                pair = {"query_id": qid, "query": queries[qid], "positive_id": did}
                pairs.append({**pair, "positive_row": store.row(did)})
    texts = DocStore(work / "corpus.arrow").texts_at(p["positive_row"] for p in pairs)
    for p, text in zip(pairs, texts, strict=True):
        p["positive"] = text
    counts = {
        "queries": len(queries),
        "docs": docs,
        "qrels_lines": lines,
        "skipped_by_max_queries": limit.skipped,
        "held_out_pairs": limit.held_out,
    }
    return SourceData(_pairs_table(pairs), counts)


def read_pairs(source, work: Path, rejects: RejectLog) -> SourceData:
    """A pairs file / HF dataset streamed through Ray Data; its texts form the mining corpus.

    Rows repeating a (query, positive) pair are grouped: their negatives join the first row's
    (a triplet file with one row per negative gives one pair with all of them, in file order);
    a repeat that adds no new negative is a reject (``duplicate (query, positive) pair``).
    """
    name = source.hf_name or str(source.path)
    pairs, limit, rows = [], _QueryLimit(source.max_queries, source.holdout), 0
    seen: dict[tuple[str, str], int] = {}  # pair -> its position in ``pairs``
    grouped = 0
    with DocStoreWriter(work / "corpus.arrow") as store:
        for batch in pairs_dataset(source).iter_batches(batch_format="pyarrow"):
            for row in batch.to_pylist():
                rows += 1
                key = (row["query_id"], row["positive_id"])
                if row["reject"]:
                    rejects.add(name, None, row["reject"], raw=row["raw"])
                elif key in seen:
                    pair = pairs[seen[key]]
                    have = set(pair["given_negative_ids"])
                    new = [i for i, d in enumerate(row["negative_ids"]) if d not in have]
                    if not new:
                        reason = "duplicate (query, positive) pair"
                        rejects.add(name, None, reason, id="\t".join(key))
                        continue
                    grouped += 1
                    ids = [row["negative_ids"][i] for i in new]
                    store.add(ids, [row["negatives"][i] for i in new])
                    pair["given_negative_ids"] += ids
                    pair["given_negative_rows"] += [store.row(d) for d in ids]
                elif limit.allows(row["query_id"]):
                    seen[key] = len(pairs)
                    store.add(
                        [row["positive_id"], *row["negative_ids"]],
                        [row["positive"], *row["negatives"]],
                    )
                    row["given_negative_ids"] = row["negative_ids"]
                    row["positive_row"] = store.row(row["positive_id"])
                    row["given_negative_rows"] = [store.row(d) for d in row["negative_ids"]]
                    keys = [*_PAIR_KEYS, "given_negative_ids", *ROW_COLUMNS]
                    pairs.append({k: row[k] for k in keys})
        docs = len(store)
    counts = {
        "rows": rows,
        "grouped_rows": grouped,
        "docs": docs,
        "skipped_by_max_queries": limit.skipped,
        "held_out_pairs": limit.held_out,
    }
    return SourceData(_pairs_table(pairs), counts)
