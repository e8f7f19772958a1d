"""Property tests (hypothesis) of the readers: any byte soup gives rows or rejects, never a crash.

For BEIR corpus / queries / qrels files and jsonl / parquet pair files: every non-blank input
line (or parquet row) comes out as exactly one usable row or one reject, and each reject names
its file, line and reason. Bounded: a fixed number of examples, derandomized (the same inputs on
every run), no deadline (a loaded CI machine must not fail a test for being slow).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spladeray.data.beir import (
    Rejects,
    doc_text,
    iter_corpus,
    iter_qrels,
    load_qrels,
    load_queries,
)
from spladeray.data.readers import (
    PAIRS_SCHEMA,
    _split_lines,
    beir_corpus_dataset,
    iter_queries,
    normalize_pairs,
    parse_corpus_lines,
    parse_pairs_lines,
)

BOUNDED = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
# rows that look like BEIR rows, with every field possibly of the wrong type
beir_rows = st.fixed_dictionaries(
    {},
    optional={"_id": json_values, "title": json_values, "text": json_values, "x": json_values},
)


lines = st.one_of(
    beir_rows.map(lambda r: json.dumps(r).encode()),  # plausible rows
    json_values.map(lambda v: json.dumps(v).encode()),  # JSON that is no object
    st.text(max_size=40).map(
        lambda t: t.encode("utf-8", "surrogatepass")
    ),  # text, even lone surrogates
    st.binary(max_size=40),  # byte soup
    st.sampled_from(
        [b"[" * 100_000, b'{"_id": 1' + b"9" * 5000 + b', "text": "x"}', b"\xef\xbb\xbf{}", b"\r"]
    ),
)
files = st.lists(lines, max_size=12).map(lambda ls: b"\n".join(ls) + b"\n")


def non_blank(data: bytes, skip_header: bool = False) -> int:
    """Lines (split at ``\\n``) that are not whitespace, as a reader must account for them."""
    count = 0
    for n, raw in enumerate(data.split(b"\n"), 1):
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            blank = not raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            blank = not raw.strip()
        if skip_header and n == 1 and raw.split(b"\t")[0].strip() in (b"query-id", b"qid"):
            blank = True
        count += not blank
    return count


def check_rejects(rejects: Rejects, path: Path, total_lines: int) -> None:
    for r in rejects.rows:
        assert r["source"] == str(path)
        assert 1 <= r["line"] <= total_lines
        assert isinstance(r["reason"], str) and r["reason"]


@BOUNDED
@given(files)
def test_corpus_and_queries_are_rows_or_rejects(data):
    with tempfile.TemporaryDirectory() as tmp:
        beir = Path(tmp)
        for name in ("corpus.jsonl", "queries.jsonl"):
            (beir / name).write_bytes(data)
        expected = non_blank(data)
        total = data.count(b"\n") + 1

        rejects = Rejects()
        docs = list(iter_corpus(beir, rejects=rejects))
        assert len(docs) + len(rejects) == expected
        check_rejects(rejects, beir / "corpus.jsonl", total)
        for doc in docs:
            assert isinstance(doc["_id"], str) and doc["_id"].strip()
            assert doc_text(doc)

        rejects = Rejects()
        queries = load_queries(beir, rejects)
        assert all(isinstance(k, str) and v.strip() for k, v in queries.items())

        seen: list = []
        rows = list(iter_queries(beir, lambda source, line, reason, **kw: seen.append(line)))
        assert len(rows) + len(seen) == expected
        assert all(1 <= line <= total for line in seen)


qrels_lines = st.one_of(
    st.tuples(st.text(max_size=6), st.text(max_size=6), st.integers(-3, 3)).map(
        lambda t: f"{t[0]}\t{t[1]}\t{t[2]}".encode("utf-8", "surrogatepass")
    ),
    st.lists(st.text(max_size=6), max_size=5).map(
        lambda ps: "\t".join(ps).encode("utf-8", "surrogatepass")
    ),
    st.just(b"query-id\tcorpus-id\tscore"),
    st.just(b'"q1\tc1\t1'),  # a quote must not swallow the next lines
    st.binary(max_size=20),
)


@BOUNDED
@given(st.lists(qrels_lines, max_size=12).map(lambda ls: b"\n".join(ls)))
def test_qrels_lines_are_rows_or_rejects(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "test.tsv"
        path.write_bytes(data)
        rejects = Rejects()
        rows = list(iter_qrels(path, rejects))
        assert len(rows) + len(rejects) == non_blank(data, skip_header=True)
        check_rejects(rejects, path, data.count(b"\n") + 1)
        for _, qid, did, rel in rows:
            assert qid and did and isinstance(rel, int)


@BOUNDED
@given(files)
def test_ray_line_parsers_give_a_row_or_a_reject_per_line(data):
    # what read_text_lines hands the parsers: one row per line, undecodable ones flagged
    batch = pa.Table.from_pylist(_split_lines({"bytes": data, "path": "corpus.jsonl"}))
    if batch.num_rows == 0:
        batch = pa.table({"text": pa.array([], pa.string()), "problem": pa.array([], pa.string())})
    expected = non_blank(data)
    corpus = parse_corpus_lines(batch).to_pylist()
    assert len(corpus) == expected
    for row in corpus:
        assert (row["reject"] is None) == (row["text"] is not None)
        assert row["reject"] is None or row["reject"].strip()
    columns = {"query": "_id", "positive": "text", "negatives": "x"}
    pairs = parse_pairs_lines(batch, columns).to_pylist()
    assert len(pairs) == expected
    for row in pairs:
        assert (row["reject"] is None) == (row["query"] is not None and row["positive"] is not None)


column_types = st.sampled_from(
    [pa.string(), pa.int64(), pa.float64(), pa.bool_(), pa.list_(pa.string()), pa.list_(pa.int64())]
)


def _values(kind: pa.DataType):
    if pa.types.is_list(kind):
        inner = st.text(max_size=6) if kind.value_type == pa.string() else st.integers(-5, 5)
        return st.none() | st.lists(st.none() | inner, max_size=3)
    return (
        st.none()
        | {
            pa.string(): st.text(max_size=8),
            pa.int64(): st.integers(-(2**40), 2**40),
            pa.float64(): st.floats(allow_nan=True),
            pa.bool_(): st.booleans(),
        }[kind]
    )


@st.composite
def parquet_tables(draw):
    n = draw(st.integers(0, 8))
    names = draw(
        st.lists(st.sampled_from(["query", "positive", "negatives", "query_id", "x"]), unique=True)
    )
    cols = {}
    for name in names:
        kind = draw(column_types)
        cols[name] = pa.array(draw(st.lists(_values(kind), min_size=n, max_size=n)), kind)
    return pa.table(cols) if cols else pa.table({"x": pa.array([None] * n, pa.string())})


@BOUNDED
@given(parquet_tables())
def test_parquet_pairs_rows_are_rows_or_rejects(table):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.parquet"
        pq.write_table(table, path)
        read = pq.read_table(path)
    columns = {k: k for k in ("query", "positive", "negatives", "query_id")}
    out = normalize_pairs(read, columns)
    assert out.schema == PAIRS_SCHEMA and out.num_rows == table.num_rows
    for row in out.to_pylist():
        if row["reject"] is None:
            assert row["query"] and row["positive"] and row["query_id"]
        else:
            assert row["raw"] is not None


def test_a_corpus_with_bytes_that_are_not_utf8_is_read_through_ray(ray_cluster, tmp_path):
    """``ray.data.read_text`` would fail the whole file; each bad line is one reject instead."""
    lines = [
        json.dumps({"_id": "a", "text": "fine"}).encode(),
        b'{"_id": "b", "text": "caf\xe9"}',  # latin-1, not UTF-8
        json.dumps({"_id": "c", "text": "line\u2028separator"}, ensure_ascii=False).encode(),
        b"\xff\xfe",
    ]
    (tmp_path / "corpus.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    rows = beir_corpus_dataset(tmp_path).take_all()
    assert [r["doc_id"] for r in rows if r["reject"] is None] == ["a", "c"]
    rejects = [r["reject"] for r in rows if r["reject"] is not None]
    assert len(rejects) == 2
    assert all("corpus.jsonl:" in r and "not valid UTF-8" in r for r in rejects)
    assert {r.split("corpus.jsonl:")[1].split(":")[0] for r in rejects} == {"2", "4"}


def test_a_repeated_id_with_other_content_is_rejected_never_overwritten(tmp_path):
    """A query id (or a qrels pair) given twice with different content keeps the first and
    rejects the second, naming both lines; an exact repeat changes nothing and is skipped."""
    (tmp_path / "queries.jsonl").write_text(
        '{"_id": "q1", "text": "first"}\n{"_id": "q1", "text": "first"}\n'
        '{"_id": "q1", "text": "second"}\n{"_id": "q2", "text": "other"}\n'
    )
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("q1\td1\t1\nq1\td1\t1\nq1\td1\t0\nq1\td2\t1\n")
    rejects = Rejects()
    assert load_queries(tmp_path, rejects) == {"q1": "first", "q2": "other"}
    assert load_qrels(tmp_path, "test", rejects) == {"q1": {"d1": 1, "d2": 1}}
    lines = [(Path(r["source"]).name, r["line"]) for r in rejects.rows]
    assert lines == [("queries.jsonl", 3), ("test.tsv", 3)]
    assert all("first on line 1" in r["reason"] for r in rejects.rows)
    with pytest.raises(ValueError, match=r"queries.jsonl:3: .*repeated"):
        load_queries(tmp_path)
