"""The DuckDB store: schema from sql/, brief connections that wait out other writers, one-transaction loads.

DuckDB allows one writing process per file, so nothing here keeps a connection open:
each step opens, does its work in an explicit transaction, and closes. A second process
that finds the file locked waits and retries instead of failing.
"""

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import duckdb

from .errors import StoreError

log = logging.getLogger(__name__)

SCHEMA_FILE = "schema.sql"
REPORT_VIEWS = ("sentiment_mix_by_day", "top_phrases_by_sentiment", "model_history", "file_status", "quarantine_reasons",
                "span_confidence_by_day")


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


@contextmanager
def connect(path: str | Path, read_only: bool = False, wait_seconds: float = 600.0,
            memory_limit: str | None = "1GB", on_wait: Callable[[str], None] | None = None
            ) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the database file, retried while another process holds its lock.

    ``on_wait`` is told once, with the reason, when the first try finds the file locked.
    """
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
            if on_wait is not None and delay == 0.05:
                on_wait(f"{path} is locked by another process (an extract run writing?); waiting up to "
                        f"{wait_seconds:.0f} s")
            time.sleep(delay * (0.5 + random.random()))  # jitter: two waiting runs do not retry in step
            delay = min(delay * 2, 2.0)
    try:
        yield con
    finally:
        con.close()


def sql_text(name: str) -> str:
    """A statement file of sql/, which installs as the data package span_jobs.sql (no checkout needed)."""
    return files("span_jobs.sql").joinpath(f"{name}.sql").read_text()


def named_statements(name: str) -> dict[str, str]:
    """The statements of sql/<name>.sql by their ``-- name: <key>`` headers, in file order.

    One file holds a job's statements; the code runs them by name, so the SQL reads as SQL and
    nothing is split on semicolons.
    """
    statements: dict[str, list[str]] = {}
    current = None
    for line in sql_text(name).splitlines():
        if line.startswith("-- name:"):
            current = line.removeprefix("-- name:").strip()
            statements[current] = []
        elif current is not None:
            statements[current].append(line)
    return {key: "\n".join(lines).strip() for key, lines in statements.items()}


def ensure_schema(path: str | Path) -> None:
    """Create tables and report views if missing; safe to run on every open."""
    with connect(path) as con:
        con.execute("begin transaction")
        con.execute(sql_text("schema"))
        for view in REPORT_VIEWS:
            con.execute(sql_text(view))
        con.execute("commit")


@dataclass
class QueryResult:
    names: list[str]
    rows: list[tuple]
    is_truncated: bool  # more rows than max_rows: only the first max_rows are in rows


def run_query(path: str | Path, sql: str, params: dict | None = None, max_rows: int = 10_000,
              timeout_seconds: float = 60.0, wait_seconds: float = 600.0,
              on_wait: Callable[[str], None] | None = None) -> QueryResult:
    """Run one read-only statement; at most ``max_rows`` rows come back, and it is interrupted
    after ``timeout_seconds`` (the wait for a writer's lock, up to ``wait_seconds``, not counted)."""
    with connect(path, read_only=True, wait_seconds=wait_seconds, on_wait=on_wait) as con:
        con.execute("set enable_external_access = false")  # no attach, no reading other files
        con.execute("set lock_configuration = true")  # ...and no undoing that from inside the query
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as exc:
            raise StoreError(f"query failed: {str(exc).splitlines()[0]}") from exc
        if len(statements) != 1:
            raise StoreError(f"one statement per query, not {len(statements)}")
        timer = threading.Timer(timeout_seconds, con.interrupt)  # interrupt() may come from another thread
        timer.start()
        try:
            cursor = con.execute(sql, params or {})
            names = [d[0] for d in cursor.description] if cursor.description else []
            rows = cursor.fetchmany(max_rows + 1) if cursor.description else []
        except duckdb.InterruptException as exc:
            raise StoreError(f"query interrupted after its {timeout_seconds:g} s timeout") from exc
        except duckdb.Error as exc:
            raise StoreError(f"query failed: {str(exc).splitlines()[0]}") from exc  # one line; no caret art
        finally:
            timer.cancel()
        return QueryResult(names, rows[:max_rows], len(rows) > max_rows)
