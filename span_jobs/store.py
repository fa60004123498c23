"""The store: schema from sql/, brief connections, one-transaction loads, on one of two engines.

- A DuckDB file (the default, one machine). DuckDB allows one writing process per file, so
  nothing here keeps a connection open: each step opens, does its work in an explicit
  transaction, and closes. A second process that finds the file locked waits and retries.
- A DuckLake catalog on PostgreSQL, ``ducklake:postgres:<libpq connection string>`` (many
  machines): the tables are Parquet files under the lake's data path (SPAN_JOBS_LAKE_DATA or
  ``--lake-data``, needed when the lake is created), the metadata lives in PostgreSQL, and any
  number of processes commit concurrently. DuckLake has no primary keys and aborts concurrent
  deletes, so every writer only appends; claims are PostgreSQL advisory locks (inbox.claim).

Same tables, same views, same statements on both.
"""

import fcntl
import hashlib
import importlib.util
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import duckdb

from . import settings
from .errors import StoreError

log = logging.getLogger(__name__)

LAKE_PREFIX = "ducklake:"
LAKE_EXTENSIONS = (("duckdb_extension_ducklake", "ducklake"), ("duckdb_extension_postgres", "postgres"))


def is_lake(database: str | Path) -> bool:
    return str(database).startswith(LAKE_PREFIX)


def catalog_dsn(database: str | Path) -> str:
    """The libpq connection string of a lake's PostgreSQL catalog."""
    spec = str(database).removeprefix(LAKE_PREFIX)
    if not spec.startswith("postgres:"):
        raise StoreError(f"{database}: only DuckLake catalogs on PostgreSQL are supported (ducklake:postgres:...)")
    return spec.removeprefix("postgres:")


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _load_lake_extensions(con: duckdb.DuckDBPyConnection) -> None:
    """DuckLake and PostgreSQL from their pip wheels (span-jobs[lake]); nothing from the network."""
    con.execute("set autoinstall_known_extensions = false")
    con.execute("set autoload_known_extensions = false")
    directory = settings.home() / "duckdb-extensions"
    directory.mkdir(parents=True, exist_ok=True)
    con.execute(f"set extension_directory = {_quoted(str(directory))}")
    version = duckdb.__version__
    with open(directory / ".install.lock", "w") as lock:  # two first runs at once install once
        fcntl.flock(lock, fcntl.LOCK_EX)
        for module, name in LAKE_EXTENSIONS:
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.submodule_search_locations:
                raise StoreError(f"a DuckLake database needs the {name} extension: pip install 'span-jobs[lake]'")
            package_dir = Path(list(spec.submodule_search_locations)[0])
            wheel_file = package_dir / "extensions" / f"v{version}" / f"{name}.duckdb_extension"
            if not wheel_file.exists():
                raise StoreError(f"{module} has no extension for duckdb {version}; install the matching wheel")
            installed = con.execute("select installed from duckdb_extensions() where extension_name = $1",
                                    [name if name != "postgres" else "postgres_scanner"]).fetchone()
            if not (installed and installed[0]):
                con.execute(f"install {_quoted(str(wheel_file))}")
            con.execute(f"load {name}")


def _attach_lake(con: duckdb.DuckDBPyConnection, database: str | Path, read_only: bool) -> None:
    catalog_dsn(database)  # refuses catalogs other than PostgreSQL
    _load_lake_extensions(con)
    options = []
    data = os.environ.get("SPAN_JOBS_LAKE_DATA")
    if data and not read_only:
        options.append(f"data_path {_quoted(data if '://' in data else str(Path(data).resolve()) + os.sep)}")
    if read_only:
        options.append("read_only")
    statement = f"attach {_quoted(str(database))} as lake" + (f" ({', '.join(options)})" if options else "")
    for attempt in range(6):
        try:
            con.execute(statement)
            break
        except duckdb.Error as exc:
            # two workers that start on a new catalog both create its tables; the loser's CREATE
            # fails (DuckLake's known first-write race) and finds the catalog made when it tries again
            if _is_connection_error(exc):
                _wait_for_catalog(con, statement)
                break
            if "initialize DuckLake" not in str(exc) or attempt == 5:
                hint = "" if data else " (creating a lake needs its data path: --lake-data DIR or SPAN_JOBS_LAKE_DATA)"
                raise StoreError(f"cannot attach the lake: {str(exc).splitlines()[0]}{hint}") from exc
            time.sleep(0.2 * (attempt + 1) * (0.5 + random.random()))


def _wait_for_catalog(con: duckdb.DuckDBPyConnection, statement: str) -> None:
    """Run a statement that reaches the catalog, waiting while it is down: a restarting PostgreSQL
    refuses or drops connections for a few seconds. The wait ends with one clear line."""
    deadline = time.monotonic() + CATALOG_WAIT_SECONDS
    attempt = 0
    while True:
        try:
            con.execute(statement)
            return
        except duckdb.Error as exc:
            if not _is_connection_error(exc):
                raise StoreError(f"cannot attach the lake: {str(exc).splitlines()[0]}") from exc
            if time.monotonic() > deadline:
                raise StoreError(f"cannot reach the lake's catalog: {_connection_reason(exc)} "
                                 f"(waited {CATALOG_WAIT_SECONDS:.0f} s)") from exc
            attempt += 1
            log.info("the lake's catalog is unreachable (%s); trying again", _connection_reason(exc))
            time.sleep(min(2.0, 0.2 * attempt) * (0.5 + random.random()))


CATALOG_WAIT_SECONDS = 60.0
_CONNECTION_LOST = ("server closed the connection", "connection refused", "could not connect", "terminating connection",
                    "the database system is", "no connection to the server", "connection to server", "ssl syscall")


def _is_connection_error(exc: Exception) -> bool:
    """The catalog's PostgreSQL went away (restart, network), as libpq words it through DuckDB."""
    text = str(exc).lower()
    return any(phrase in text for phrase in _CONNECTION_LOST)


# A catalog lost in mid-statement is not always worded as such: DuckDB may report only the
# transaction it aborted, or the rollback that failed (seen on a PostgreSQL restart).
_LOST_MID_STATEMENT = ("current transaction is aborted", 'failed to execute query "rollback"')


def _is_lost_catalog(exc: Exception) -> bool:
    return _is_connection_error(exc) or any(phrase in str(exc).lower() for phrase in _LOST_MID_STATEMENT)


def _connection_reason(exc: Exception) -> str:
    """libpq's own words from a DuckDB error, without the SQL text the extension wraps around them."""
    for line in str(exc).splitlines():
        if any(phrase in line.lower() for phrase in _CONNECTION_LOST):
            return line.rpartition('": ')[2].strip()
    return str(exc).splitlines()[0]


def work_dir(database: str | Path) -> Path:
    """This machine's lock, staging and spill files for a database: beside a DuckDB file, on the same
    file system; under SPAN_JOBS_HOME for a lake (they are per process, never shared)."""
    if is_lake(database):
        return settings.home() / "lake-work" / hashlib.sha1(str(database).encode()).hexdigest()[:16]
    return Path(f"{database}.work")

SCHEMA_FILE = "schema.sql"
REPORT_VIEWS = ("sentiment_mix_by_day", "top_phrases_by_sentiment", "model_history", "file_status", "quarantine_reasons",
                "span_confidence_by_day")


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


_lakes: dict[tuple, duckdb.DuckDBPyConnection] = {}
_lakes_lock = threading.Lock()


def _attached_lake(database: str | Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """This process's DuckDB instance with the lake attached, made on first use. Attaching loads two
    extensions and reads the catalog (0.17 s here) and a file takes five steps, each with its own
    connection: cursors of one instance cost 5 ms. Its PostgreSQL connections come back by
    themselves after a catalog restart (checked on PostgreSQL 15)."""
    key = (str(database), read_only, os.environ.get("SPAN_JOBS_LAKE_DATA"), str(settings.home()))
    with _lakes_lock:
        if key not in _lakes:
            _lakes[key] = _new_attached_lake(database, read_only)
        return _lakes[key]


def _new_attached_lake(database: str | Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    try:
        _attach_lake(con, database, read_only)
    except BaseException:
        con.close()
        raise
    return con


@contextmanager
def connect(path: str | Path, read_only: bool = False, wait_seconds: float = 600.0,
            memory_limit: str | None = "1GB", on_wait: Callable[[str], None] | None = None,
            private: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the database file, retried while another process holds its lock.

    ``on_wait`` is told once, with the reason, when the first try finds the file locked. On a lake,
    a cursor of this process's attached instance, or with ``private`` an instance of its own (for
    settings that must not outlive the connection).
    """
    if is_lake(path):
        instance = _new_attached_lake(path, read_only) if private else _attached_lake(path, read_only)
        con = instance.cursor()
        try:
            _wait_for_catalog(con, "use lake")  # the first statement of a cursor that reaches the catalog
            con.execute(f"set memory_limit = {_quoted(memory_limit)}" if memory_limit else "reset memory_limit")
            yield con
        except BaseException as exc:
            # roll back here, where a failure is an exception: closing a cursor whose transaction lost
            # its catalog connection makes DuckDB's own rollback throw from C++ and abort the process
            try:
                con.execute("rollback")
            except duckdb.Error:
                pass  # no transaction was open, or the catalog is gone: nothing was committed either way
            if not (isinstance(exc, duckdb.Error) and _is_lost_catalog(exc)):
                raise
            # nothing of an unfinished transaction is committed; the file stays pending
            raise StoreError(f"lost the connection to the lake's catalog: {_connection_reason(exc)}") from exc
        finally:
            con.close()
            if private:
                instance.close()
        return
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


def _schema_statements() -> list[str]:
    return [sql_text(SCHEMA_FILE.removesuffix(".sql"))] + [sql_text(view) for view in REPORT_VIEWS]


def schema_digest() -> str:
    return hashlib.sha256("\n".join(_schema_statements()).encode()).hexdigest()


def _schema_is_current(con: duckdb.DuckDBPyConnection, digest: str) -> bool:
    try:
        return con.execute("select count(*) from schema_version where digest = $1", [digest]).fetchone()[0] > 0
    except duckdb.CatalogException:  # a new store, or one made before schema_version
        return False


def ensure_schema(path: str | Path) -> None:
    """Create tables and report views if missing, or bring them to this version's text.

    Skipped when the store already holds this text (a read, no write): on a lake, every worker's
    every run calls this, and concurrent DDL commits would conflict. Two workers creating a new
    lake at once may still conflict; the loser retries and then finds it current.
    """
    digest = schema_digest()
    for attempt in range(3):
        with connect(path) as con:
            if _schema_is_current(con, digest):
                return
            try:
                con.execute("begin transaction")
                for statement in _schema_statements():
                    con.execute(statement)
                con.execute("insert into schema_version values ($1, now())", [digest])
                con.execute("commit")
                return
            except duckdb.Error as exc:
                try:
                    con.execute("rollback")
                except duckdb.Error:
                    pass
                if not is_lake(path) or attempt == 2:
                    raise StoreError(f"{path}: cannot create the schema: {str(exc).splitlines()[0]}") from exc
                log.info("schema creation conflicted with another worker's (%s); retrying", exc)
        time.sleep(0.5 * (attempt + 1))


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
    # private: the settings below lock the instance's configuration
    with connect(path, read_only=True, wait_seconds=wait_seconds, on_wait=on_wait, private=True) as con:
        if is_lake(path):  # the lake's own Parquet files stay readable, and nothing else
            data_path = con.execute("select value from ducklake_options('lake') where option_name = 'data_path'"
                                    ).fetchone()[0]
            con.execute("set allowed_directories = $1", [[data_path]])
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
