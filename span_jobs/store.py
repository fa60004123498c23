"""The DuckDB store: schema from sql/, brief connections that wait out other writers, one-transaction loads.

DuckDB allows one writing process per file, so nothing here keeps a connection open:
each step opens, does its work in an explicit transaction, and closes. A second process
that finds the file locked waits and retries instead of failing.
"""

import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from .errors import StoreError

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
SCHEMA_FILE = "schema.sql"
REPORT_VIEWS = ("sentiment_mix_by_day", "top_phrases_by_sentiment", "model_history", "file_status", "quarantine_reasons")


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


@contextmanager
def connect(path: str | Path, read_only: bool = False, wait_seconds: float = 600.0,
            memory_limit: str | None = "1GB") -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the database file, retried while another process holds its lock."""
    path = Path(path)
    if read_only and not path.exists():
        raise StoreError(f"{path}: no such database")
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    delay = 0.05
    while True:
        try:
            config = {"memory_limit": memory_limit} if memory_limit else {}
            con = duckdb.connect(str(path), read_only=read_only, config=config)
            break
        except duckdb.Error as exc:
            if not _is_lock_error(exc) or time.monotonic() > deadline:
                raise StoreError(f"{path}: cannot open the database: {exc}") from exc
            time.sleep(delay * (0.5 + random.random()))  # jitter: two waiting runs do not retry in step
            delay = min(delay * 2, 2.0)
    try:
        yield con
    finally:
        con.close()


def sql_text(name: str) -> str:
    return (SQL_DIR / f"{name}.sql").read_text()


def ensure_schema(path: str | Path) -> None:
    """Create tables and report views if missing; safe to run on every open."""
    with connect(path) as con:
        con.execute("begin transaction")
        con.execute(sql_text("schema"))
        for view in REPORT_VIEWS:
            con.execute(sql_text(view))
        con.execute("commit")


def run_query(path: str | Path, sql: str, params: dict | None = None):
    """Run one statement on a read-only connection; returns (column names, rows)."""
    with connect(path, read_only=True) as con:
        con.execute("set enable_external_access = false")  # no attach, no reading other files
        con.execute("set lock_configuration = true")  # ...and no undoing that from inside the query
        try:
            cursor = con.execute(sql, params or {})
        except duckdb.Error as exc:
            raise StoreError(f"query failed: {str(exc).splitlines()[0]}") from exc  # one line; no caret art
        names = [d[0] for d in cursor.description] if cursor.description else []
        return names, cursor.fetchall()
