"""Errors worth retrying leave a file pending; a file's own errors, and errors that outlast the
attempt limit, give it a failed ledger row with the reason. Real Parquet files, a real DuckDB file.

The storage faults are injected into pyarrow's reader (a network file system's EIO cannot be
had on a local disk); everything of ours runs as shipped.
"""

import errno

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import span_jobs.pipeline
from span_jobs.extract import FullTextExtractor
from span_jobs.pipeline import MAX_ATTEMPTS, run_extract
from span_jobs.staging import FileError, is_transient


def write_inbox(inbox, rows=20):
    inbox.mkdir()
    pq.write_table(pa.table({"id": [f"a{i}" for i in range(rows)], "text": [f"tweet {i}" for i in range(rows)]}),
                   inbox / "a.parquet")
    pq.write_table(pa.table({"id": ["b0", "b1"], "text": ["fine", "also fine"]}), inbox / "b.parquet")


@pytest.fixture
def storage_errors(monkeypatch):
    """Reading a.parquet's batches raises EIO while ``failing["left"] > 0``."""
    failing = {"left": 0}

    class FlakyParquetFile(pq.ParquetFile):
        def __init__(self, source, *args, **kwargs):
            super().__init__(source, *args, **kwargs)
            self.is_flaky = str(source).endswith("a.parquet")

        def iter_batches(self, *args, **kwargs):
            if self.is_flaky and failing["left"] > 0:
                failing["left"] -= 1
                raise OSError(errno.EIO, "Input/output error (injected)")
            return super().iter_batches(*args, **kwargs)

    monkeypatch.setattr(pq, "ParquetFile", FlakyParquetFile)
    return failing


def ledger(db):
    with duckdb.connect(str(db), read_only=True) as con:
        return {p.rsplit("/", 1)[-1]: (status, error) for p, status, error in
                con.execute("select file_path, status, error from processed_files").fetchall()}


def stored_ids(db):
    with duckdb.connect(str(db), read_only=True) as con:
        return sorted(r[0] for r in con.execute("select tweet_id from spans").fetchall())


def test_os_errors_with_errno_are_transient_and_format_errors_are_not():
    assert is_transient(OSError(errno.EIO, "Input/output error"))
    assert is_transient(TimeoutError(errno.ETIMEDOUT, "timed out"))
    assert not is_transient(OSError("Couldn't deserialize thrift"))  # pyarrow's corrupt footer: no errno
    assert not is_transient(FileError("no text column"))
    assert not is_transient(pa.ArrowInvalid("Parquet magic bytes not found"))


def test_a_storage_hiccup_leaves_the_file_pending_and_the_next_run_stores_it(tmp_path, storage_errors):
    inbox, db = tmp_path / "inbox", tmp_path / "spans.duckdb"
    write_inbox(inbox)
    storage_errors["left"] = 1
    first = run_extract(inbox, db, FullTextExtractor())
    assert {f.path.rsplit("/", 1)[-1]: f.status for f in first.files} == {"a.parquet": "retry", "b.parquet": "done"}
    assert "a.parquet" not in ledger(db)  # no permanent verdict on a hiccup
    assert first.totals()["files_to_retry"] == 1
    with duckdb.connect(str(db), read_only=True) as con:  # what a user sees in SQL meanwhile
        shown = con.execute("select status, error from file_status where file_path like '%a.parquet'").fetchall()
    assert shown == [("retry", "attempt 1: read error: [Errno 5] Input/output error (injected)")]

    second = run_extract(inbox, db, FullTextExtractor())
    assert [f.status for f in second.files] == ["done"]
    assert stored_ids(db) == sorted([f"a{i}" for i in range(20)] + ["b0", "b1"])  # each exactly once
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("select count(*) from file_attempts").fetchall() == [(1,)]  # one try logged


def test_a_read_error_that_persists_is_given_up_on_with_its_reason(tmp_path, storage_errors):
    inbox, db = tmp_path / "inbox", tmp_path / "spans.duckdb"
    write_inbox(inbox)
    storage_errors["left"] = 100
    statuses = []
    for _ in range(MAX_ATTEMPTS + 1):
        statuses.append([f.status for f in run_extract(inbox, db, FullTextExtractor()).files
                         if f.path.endswith("a.parquet")])
    assert statuses == [["retry"]] * (MAX_ATTEMPTS - 1) + [["failed"], []]  # then never again
    status, error = ledger(db)["a.parquet"]
    assert status == "failed"
    assert error.startswith(f"gave up after {MAX_ATTEMPTS} attempts: read error:") and "Input/output" in error


def test_a_corrupt_file_fails_at_once(tmp_path):
    inbox, db = tmp_path / "inbox", tmp_path / "spans.duckdb"
    inbox.mkdir()
    (inbox / "c.parquet").write_bytes(b"PAR1 this is not really parquet PAR1")
    assert [f.status for f in run_extract(inbox, db, FullTextExtractor()).files] == ["failed"]
    assert ledger(db)["c.parquet"][0] == "failed"


def test_a_load_that_does_not_reconcile_rolls_back_and_is_given_up_on(tmp_path, monkeypatch):
    inbox, db = tmp_path / "inbox", tmp_path / "spans.duckdb"
    write_inbox(inbox)
    stage_file = span_jobs.pipeline.stage_file

    def miscounting_stage(f, *args, **kwargs):  # claims one row more than it staged
        rows, seconds = stage_file(f, *args, **kwargs)
        return (rows + 1, seconds) if f.path.name == "a.parquet" else (rows, seconds)

    monkeypatch.setattr(span_jobs.pipeline, "stage_file", miscounting_stage)
    outcomes = [run_extract(inbox, db, FullTextExtractor(), max_attempts=2) for _ in range(3)]
    a = [[f for f in o.files if f.path.endswith("a.parquet")] for o in outcomes]
    assert [x[0].status for x in a if x] == ["retry", "failed"]
    assert "load did not reconcile: 21 rows read but 20 stored + 0 quarantined" in a[1][0].error
    assert stored_ids(db) == ["b0", "b1"]  # nothing of the file was kept
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("select count(*) from quarantine").fetchone() == (0,)
