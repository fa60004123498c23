"""A corpus of bad input: every file gets a ledger row, every row is stored or quarantined with a reason."""

import logging
import os

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from span_jobs.extract import SpanExtractor
from span_jobs.model import load_model_dir
from span_jobs.pipeline import MAX_TEXT_CHARS, run_extract

GOOD_ODD_TEXTS = {
    "emoji": "so happy 😀🎉 today",
    "rtl": "مرحبا بالعالم hello",
    "zero_width": "zero\u200bwidth\u200d joiner \ufeffbom",
    "entities": "fish &amp; chips &lt;3 &#39;yum&#39;",
    "braces": "{curly} <angle> `tick`",
    "spaces": "  lots   of\tspace\nand lines  ",
}


@pytest.fixture(scope="module")
def extractor(tiny_model_dir):
    return SpanExtractor(load_model_dir(tiny_model_dir), device="cpu")


@pytest.fixture()
def corpus(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "corrupt.parquet").write_bytes(b"PAR1" + os.urandom(300) + b"PAR1")
    (inbox / "notes.csv").write_text("id,text\n1,hello\n")
    pq.write_table(pa.table({"id": ["a"], "body": ["no text column"]}), inbox / "no_text.parquet")
    pq.write_table(pa.table({"id": ["a"], "text": [123]}), inbox / "int_text.parquet")
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}),
                   inbox / "empty.parquet")
    mixed = {
        "id": ["n1", "n2", "n3", "n4", "n5", None, "n7"] + list(GOOD_ODD_TEXTS),
        "text": [None, "", "   \t ", "x" * 100_000, "fine text", "no id", "bad label"] + list(GOOD_ODD_TEXTS.values()),
        "sentiment": [None, None, None, None, "Positive ", None, "ecstatic"] + [None] * len(GOOD_ODD_TEXTS),
    }
    pq.write_table(pa.table(mixed), inbox / "mixed.parquet")
    pq.write_table(pa.table({"id": pa.array([1, 2, 3], pa.int64()),
                             "text": pa.array([b"valid bytes", b"\xff\xfe bad", b"\xed\xa0\x80 lone surrogate"],
                                              pa.binary())}), inbox / "bytes.parquet")
    full = pa.table({"id": [f"p{i}" for i in range(200)], "text": [f"partial file row {i}" for i in range(200)]})
    pq.write_table(full, tmp_path / "partial.parquet")
    data = (tmp_path / "partial.parquet").read_bytes()
    (inbox / "growing.parquet").write_bytes(data[: len(data) // 2])  # a writer still busy with it
    return inbox, tmp_path / "spans.duckdb", full


def test_bad_input_corpus(corpus, extractor, caplog):
    inbox, db, full = corpus
    with caplog.at_level(logging.WARNING, logger="span_jobs"):
        summary = run_extract(inbox, db, extractor)
    status = {os.path.basename(f.path): f for f in summary.files}
    for name in ("corrupt.parquet", "notes.csv", "no_text.parquet", "int_text.parquet", "growing.parquet"):
        assert status[name].status == "failed", name
        assert status[name].error
        assert name in caplog.text  # a clear log line names the file
    assert "no text column" in status["no_text.parquet"].error
    assert "int64" in status["int_text.parquet"].error
    assert status["empty.parquet"].status == "done" and status["empty.parquet"].rows_in == 0
    assert status["mixed.parquet"].status == "done"

    con = duckdb.connect(str(db), read_only=True)
    reasons = dict(con.execute(
        "select coalesce(tweet_id, '<none>'), reason from quarantine where source_file like '%mixed.parquet'").fetchall())
    assert reasons == {"n1": "null text", "n2": "empty text", "n3": "empty text", "n4": "text too long",
                       "<none>": "missing id", "n7": "unknown sentiment"}
    detail = con.execute("select detail from quarantine where tweet_id = 'n4'").fetchone()[0]
    assert str(MAX_TEXT_CHARS) in detail
    stored = {r[0]: r[1:] for r in con.execute("select tweet_id, text, span, span_start, span_end, sentiment, "
                                               "is_sentiment_given from spans").fetchall()}
    assert stored["n5"][4:] == ("positive", True)  # "Positive " normalised
    for key, text in GOOD_ODD_TEXTS.items():
        got_text, span, start, end, _, _ = stored[key]
        assert got_text == text and text[start:end] == span and span.strip()
    byte_reasons = con.execute("select tweet_id, reason from quarantine where source_file like '%bytes.parquet' "
                               "order by tweet_id").fetchall()
    assert byte_reasons == [("2", "text is not valid UTF-8"), ("3", "text is not valid UTF-8")]
    assert stored["1"][0] == "valid bytes"

    # every done file reconciles: rows in = stored + quarantined, in the ledger and in the tables
    for path, rows_in, rows_stored, rows_quarantined in con.execute(
            "select file_path, rows_in, rows_stored, rows_quarantined from processed_files where status = 'done'"
    ).fetchall():
        n_spans = con.execute("select count(*) from spans where source_file = ?", [path]).fetchone()[0]
        n_quarantine = con.execute("select count(*) from quarantine where source_file = ?", [path]).fetchone()[0]
        assert rows_in == rows_stored + rows_quarantined == n_spans + n_quarantine
    failed = con.execute("select count(*) from processed_files where status = 'failed' and error is not null").fetchone()
    assert failed == (5,)
    con.close()

    # the writer finishes the growing file: it changes, so the next run processes it in full
    (inbox / "growing.parquet").write_bytes((inbox.parent / "partial.parquet").read_bytes())
    again = run_extract(inbox, db, extractor)
    assert [(os.path.basename(f.path), f.status, f.rows_stored) for f in again.files] == [
        ("growing.parquet", "done", 200)]
    # the unchanged failed files are not retried on every run
    assert run_extract(inbox, db, extractor).files == []
