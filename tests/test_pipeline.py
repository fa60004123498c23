"""extract-spans as a library: real Parquet inboxes, a real DuckDB file, a real (tiny) T5."""

import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from span_jobs.extract import FullTextExtractor, SpanExtractor
from span_jobs.errors import DataError
from span_jobs.model import load_model_dir
from span_jobs.pipeline import discover, run_extract


def write_parquet(path, columns: dict):
    pq.write_table(pa.table(columns), path)
    return path


def tweets(n, start=0, prefix="t"):
    return {
        "id": [f"{prefix}{i}" for i in range(start, start + n)],
        "text": [f" tweet number {i} is  here " for i in range(start, start + n)],
        "sentiment": [("positive", "negative", "neutral", None)[i % 4] for i in range(start, start + n)],
    }


@pytest.fixture(scope="module")
def extractor(tiny_model_dir):
    return SpanExtractor(load_model_dir(tiny_model_dir), device="cpu")


def rows(db, sql):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_extracts_every_row_with_offsets_into_raw_text_and_model_version(tmp_path, extractor):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_parquet(inbox / "a.parquet", tweets(50))
    db = tmp_path / "spans.duckdb"
    summary = run_extract(inbox, db, extractor)
    assert (summary.rows_in, summary.rows_stored, summary.rows_quarantined) == (50, 50, 0)
    stored = rows(db, "select text, span, span_start, span_end, model_version, sentiment, is_sentiment_given, "
                      "sentiment_prob, source_row from spans order by source_row")
    assert len(stored) == 50
    for i, (text, span, start, end, version, sentiment, given, prob, source_row) in enumerate(stored):
        assert text[start:end] == span and span.strip()
        assert version == extractor.version
        assert sentiment in ("positive", "negative", "neutral")
        assert source_row == i + 1
        assert given == (i % 4 != 3)
        assert (prob is None) == given


def test_rerun_adds_nothing_and_a_new_file_is_picked_up_alone(tmp_path, extractor):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    db = tmp_path / "spans.duckdb"
    write_parquet(inbox / "a.parquet", tweets(20))
    first = run_extract(inbox, db, extractor)
    assert first.count("done") == 1
    again = run_extract(inbox, db, extractor)
    assert again.files == []
    assert rows(db, "select count(*) from spans") == [(20,)]
    write_parquet(inbox / "b.parquet", tweets(7, start=100))
    later = run_extract(inbox, db, extractor)
    assert [f.path.endswith("b.parquet") for f in later.files] == [True]
    assert rows(db, "select count(*), count(distinct tweet_id) from spans") == [(27, 27)]
    assert rows(db, "select count(*) from processed_files where status = 'done'") == [(2,)]


def test_duplicate_ids_within_and_across_files_are_quarantined_once(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    db = tmp_path / "spans.duckdb"
    write_parquet(inbox / "a.parquet", {"id": ["x", "y", "x"], "text": ["one", "two", "three"]})
    run_extract(inbox, db, FullTextExtractor())
    write_parquet(inbox / "b.parquet", {"id": ["y", "z"], "text": ["again", "new"]})
    run_extract(inbox, db, FullTextExtractor())
    assert rows(db, "select tweet_id, span from spans order by tweet_id") == [("x", "one"), ("y", "two"), ("z", "new")]
    assert rows(db, "select tweet_id, reason from quarantine order by reason") == [
        ("y", "duplicate id already stored"), ("x", "duplicate id in file")]


def test_settling_files_wait_and_a_glob_inbox_works(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    db = tmp_path / "spans.duckdb"
    write_parquet(inbox / "a.parquet", tweets(3))
    write_parquet(inbox / "b.txt.parquet.tmp", tweets(3))
    assert discover(inbox, db, settle_seconds=3600) == []
    found = discover(str(inbox / "*.parquet"), db)
    assert [f.path.name for f in found] == ["a.parquet"]


def test_missing_inbox_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="inbox"):
        run_extract(tmp_path / "nope", tmp_path / "db.duckdb", FullTextExtractor())


def test_other_columns_and_created_at_are_kept(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    db = tmp_path / "spans.duckdb"
    import datetime as dt

    write_parquet(inbox / "a.parquet", {
        "id": [1, 2], "text": ["hello there", "bye"],
        "created_at": pa.array([dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), None], pa.timestamp("us", tz="UTC")),
        "user": ["ann", "bob"], "likes": [3, None],
    })
    run_extract(inbox, db, FullTextExtractor())
    got = rows(db, "select tweet_id, cast(tweet_created_at as varchar), extra_columns->>'user', "
                   "extra_columns->>'likes' from spans order by tweet_id")
    assert got[0][0] == "1" and got[0][1].startswith("2026-01-02")
    assert got[0][2:] == ("ann", "3")
    assert got[1] == ("2", None, "bob", None)


class RewritingExtractor(FullTextExtractor):
    """A real extractor whose first call rewrites the inbox file under the pipeline's feet."""

    def __init__(self, path):
        self.path, self.calls = path, 0

    def extract(self, texts, sentiments=None):
        self.calls += 1
        if self.calls == 1:
            write_parquet(self.path, tweets(5, start=500))
        return super().extract(texts, sentiments)


def test_a_file_rewritten_during_processing_is_left_for_the_next_run(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    db = tmp_path / "spans.duckdb"
    path = write_parquet(inbox / "a.parquet", tweets(3))
    first = run_extract(inbox, db, RewritingExtractor(path))
    assert [f.status for f in first.files] == ["skipped"]
    assert rows(db, "select count(*) from spans") == [(0,)]
    second = run_extract(inbox, db, FullTextExtractor())
    assert [(f.status, f.rows_stored) for f in second.files] == [("done", 5)]


class BrokenExtractor(FullTextExtractor):
    def extract(self, texts, sentiments=None):
        raise OSError("device lost")  # an OSError from the model, not from reading the file


def test_a_model_error_leaves_the_file_pending_not_failed(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    db = tmp_path / "spans.duckdb"
    write_parquet(inbox / "a.parquet", tweets(3))
    with pytest.raises(OSError, match="device lost"):
        run_extract(inbox, db, BrokenExtractor())
    assert rows(db, "select count(*) from processed_files") == [(0,)]
    assert [f.status for f in run_extract(inbox, db, FullTextExtractor()).files] == ["done"]


def test_a_touched_file_with_the_same_bytes_is_not_run_again(tmp_path):
    import os

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    db = tmp_path / "spans.duckdb"
    path = write_parquet(inbox / "a.parquet", tweets(4))
    run_extract(inbox, db, FullTextExtractor())
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns - 10**9))
    again = run_extract(inbox, db, FullTextExtractor())
    assert [f.status for f in again.files] == ["unchanged"]
    assert rows(db, "select count(*) from spans") == [(4,)]
    assert rows(db, "select count(*) from quarantine") == [(0,)]
    assert run_extract(inbox, db, FullTextExtractor()).files == []


def test_the_spans_database_opens_in_the_duckdb_cli_from_pip(tmp_path):
    """The duckdb pin (1.5.5) writes files that `pip install duckdb-cli` can read (2.x files it cannot)."""
    inbox, db = tmp_path / "inbox", tmp_path / "spans.duckdb"
    inbox.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["one tweet", "another tweet"]}), inbox / "a.parquet")
    run_extract(inbox, db, FullTextExtractor())
    cli = Path(sys.executable).with_name("duckdb")
    shown = subprocess.run([str(cli), str(db), "-csv", "-c", "select count(*) as n from spans"],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["n", "2"]
