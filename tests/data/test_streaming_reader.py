"""The streaming corpus reader (spladeray.data.readers.read_text_lines): a file read as byte
ranges gives exactly the rows and rejects of reading it whole, wherever the cuts fall."""

from __future__ import annotations

import pytest

from spladeray.data.readers import (
    _count_range,
    _decode,
    _ranges,
    _split_lines,
    parse_corpus_lines,
    read_range,
    read_text_lines,
)

LINES = [
    '\ufeff{"_id": "a", "text": "caf\u00e9 cr\u00e8me"}',  # a byte-order mark opens the file
    '{"_id": "b", "text": "\u65e5\u672c\u8a9e \U0001f600"}\r',  # CRLF, 3- and 4-byte chars
    "",  # a blank line
    b'{"_id": "c", "text": "bad \xff byte"}',  # not UTF-8: a reject with its line number
    "not json",
    '{"_id": "d", "title": "T", "text": "last, no final newline"}',
]


def _blob(final_newline: bool) -> bytes:
    parts = [x if isinstance(x, bytes) else x.encode("utf-8") for x in LINES]
    return b"\n".join(parts) + (b"\n" if final_newline else b"")


def _by_ranges(path, range_bytes: int) -> list[dict]:
    """What read_text_lines' tasks compute, in this process (no Ray): count, then read."""
    ranges = _ranges(str(path), range_bytes, None)
    before = 0
    rows = []
    for r in ranges:
        r["newlines_before"] = before
        before += _count_range(r)["newlines"]
    for r in ranges:
        pieces, first = read_range(r["uri"], r["start"], r["end"], r["newlines_before"])
        rows += [{"text": t, "problem": p} for t, p in _decode(pieces, first, r["path"])]
    return rows


@pytest.mark.parametrize("final_newline", [True, False])
def test_ranges_cut_at_every_byte_give_the_whole_file_rows(tmp_path, final_newline):
    """Every range size from 1 byte (cuts mid-line, mid-character, between \\r and \\n) up."""
    blob = _blob(final_newline)
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(blob)
    whole = _split_lines({"bytes": blob, "path": str(path)})
    assert len(whole) == len(LINES)
    assert whole[3]["problem"] == f"{path}:4: not valid UTF-8 (byte 26 of the line)"
    assert whole[0]["text"].startswith('{"_id": "a"') and whole[1]["text"].endswith("}")
    for size in range(1, len(blob) + 2):
        assert _by_ranges(path, size) == whole, f"range_bytes={size}"


def test_empty_file_has_no_lines(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert _by_ranges(tmp_path / "empty.jsonl", 4) == []


def test_read_text_lines_on_ray_data_equals_the_whole_file(ray_cluster, tmp_path):
    """Through Ray Data (a task per range, here 7 bytes), then the corpus parser: the same rows
    and rejects as the whole file parsed at once."""
    import pyarrow as pa

    blob = _blob(final_newline=False)
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(blob)
    got = read_text_lines(str(path), range_bytes=7).take_all()
    whole = _split_lines({"bytes": blob, "path": str(path)})
    assert [{"text": r["text"], "problem": r["problem"]} for r in got] == whole
    parsed = parse_corpus_lines(pa.Table.from_pylist(whole)).to_pylist()
    assert [r["doc_id"] for r in parsed] == ["a", "b", None, None, "d"]
    assert [r["reject"] is None for r in parsed] == [True, True, False, False, True]
