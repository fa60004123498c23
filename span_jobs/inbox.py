"""The inbox and its ledger: which files are new, who is processing one, and what became of each.

A file version is (path, size, mtime). The ledger (processed_files) holds one row per version a
run finished with; file_attempts counts the tries that ended in an error worth retrying, so a file
that keeps failing is given up on with its reason instead of being retried by every run forever.
"""

import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from glob import glob
from pathlib import Path

from .errors import DataError, StoreError
from .store import catalog_dsn, connect, ensure_schema, is_lake, named_statements, work_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InboxFile:
    path: Path
    size_bytes: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> "InboxFile":
        st = path.stat()
        return cls(path.resolve(), st.st_size, st.st_mtime_ns)

    @property
    def key(self) -> tuple[str, int, int]:
        return (str(self.path), self.size_bytes, self.mtime_ns)

    @property
    def stem(self) -> str:
        """A file-system-safe name for this path's lock and staging files."""
        return hashlib.sha1(str(self.path).encode("utf-8", "surrogateescape")).hexdigest()


# ---- discover -------------------------------------------------------------------------------

def inbox_paths(inbox: str | Path) -> list[Path]:
    """Files in an inbox directory (hidden and _-prefixed ones are writers' temporaries) or matching a glob."""
    inbox = str(inbox)
    if Path(inbox).is_dir():
        candidates = Path(inbox).iterdir()
    elif any(ch in inbox for ch in "*?["):
        candidates = (Path(p) for p in glob(inbox))
    elif Path(inbox).is_file():
        candidates = iter([Path(inbox)])
    else:
        raise DataError(f"{inbox}: inbox is neither a directory, a file, nor a glob that matches")
    return sorted(p for p in candidates if p.is_file() and not p.name.startswith((".", "_")))


def discover(inbox: str | Path, database: str | Path, settle_seconds: float = 0.0) -> list[InboxFile]:
    """Inbox files whose (path, size, mtime) is not in the ledger yet, oldest first.

    Files modified in the last ``settle_seconds`` may still be being written and wait for a later run.
    """
    ensure_schema(database)
    with connect(database) as con:
        done = set(con.execute("select file_path, size_bytes, mtime_ns from processed_files").fetchall())
    now = time.time_ns()
    found = []
    for path in inbox_paths(inbox):
        try:
            f = InboxFile.of(path)
        except FileNotFoundError:  # removed between listing and stat
            continue
        if f.key in done:
            continue
        if now - f.mtime_ns < settle_seconds * 1e9:
            log.info("%s: modified %.1fs ago, waiting for it to settle", path, (now - f.mtime_ns) / 1e9)
            continue
        found.append(f)
    return sorted(found, key=lambda f: (f.mtime_ns, str(f.path)))


# ---- claim ----------------------------------------------------------------------------------

class ClaimLost(StoreError):
    """The catalog session holding a file's claim ended (PostgreSQL restarted, the network failed):
    the file is not loaded, and stays pending for the next run."""


@dataclass
class Claim:
    """Whether this process holds a file's claim; ``confirm()`` right before loading checks it still does."""

    held: bool
    session: object | None = None  # a lake's claim: the PostgreSQL session that holds the lock

    def __bool__(self) -> bool:
        return self.held

    def confirm(self) -> None:
        if self.session is None:
            return  # an flock lasts as long as this process
        try:
            self.session.execute("select 1")
        except Exception as exc:  # psycopg's OperationalError and friends: the session, and its lock, are gone
            raise ClaimLost(f"lost the claim on the file in hand: {str(exc).splitlines()[0]}") from exc


@contextmanager
def claim(f: InboxFile, database: str | Path) -> Iterator[Claim]:
    """Yields a true Claim while this process holds the file's claim, a false one if another process holds it.

    For a DuckDB file, an flock beside it (one machine); for a lake, a PostgreSQL session advisory
    lock in its catalog, which works across machines (flock over NFS does not) and which the
    server drops the moment the worker's session ends: a killed worker's file is free at once.
    """
    if is_lake(database):
        with _advisory_lock(catalog_dsn(database), _lock_key(f)) as held:
            yield held
        return
    locks = work_dir(database) / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / f"{f.stem}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield Claim(False)
            return
        try:
            yield Claim(True)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _lock_key(f: InboxFile) -> int:
    """A signed 64-bit advisory-lock key for one file version."""
    digest = hashlib.sha256("\x1f".join(map(str, ("span-jobs", *f.key))).encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def _advisory_lock(dsn: str, key: int) -> Iterator[Claim]:
    try:
        import psycopg
    except ImportError as exc:
        raise StoreError("claims on a lake need psycopg: pip install 'span-jobs[lake]'") from exc
    try:
        session = psycopg.connect(dsn, autocommit=True, connect_timeout=30)
    except psycopg.Error as exc:
        raise StoreError(f"cannot reach the lake's catalog to claim a file: {exc}") from exc
    try:
        held = session.execute("select pg_try_advisory_lock(%s)", [key]).fetchone()[0]
        yield Claim(bool(held), session if held else None)
    finally:
        session.close()  # ends the session: PostgreSQL drops the lock with it


# ---- ledger ---------------------------------------------------------------------------------

LEDGER = named_statements("ledger")


def is_in_ledger(f: InboxFile, database: str | Path) -> bool:
    with connect(database) as con:
        return con.execute(LEDGER["find_version"], list(f.key)).fetchone() is not None


def is_done_with_same_content(f: InboxFile, sha256: str, database: str | Path) -> bool:
    with connect(database) as con:
        return con.execute(LEDGER["find_done_content"], [str(f.path), sha256]).fetchone() is not None


def record_outcome(f: InboxFile, database: str | Path, status: str, error: str, run_id: str,
                   sha256: str | None) -> None:
    """A ledger row for a file version that stores nothing: failed (a file-level error) or unchanged."""
    with connect(database) as con:
        con.execute("begin transaction")
        con.execute(LEDGER["insert_empty_outcome"], [*f.key, sha256, status, error, run_id, datetime.now(UTC)])
        con.execute("commit")


def record_attempt(f: InboxFile, database: str | Path, error: str, run_id: str) -> int:
    """Log one more try at this file version that ended in an error worth retrying; returns the tries so far."""
    with connect(database) as con:
        con.execute("begin transaction")
        con.execute(LEDGER["add_attempt"], [*f.key, error, run_id, datetime.now(UTC)])
        attempts = con.execute(LEDGER["attempts_so_far"], list(f.key)).fetchone()[0]
        con.execute("commit")
    return attempts
