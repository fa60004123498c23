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

from .errors import DataError
from .store import connect, ensure_schema, named_statements

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

def work_dir(database: str | Path) -> Path:
    """Lock and staging files live beside the database, on the same file system."""
    return Path(f"{database}.work")


@contextmanager
def claim(f: InboxFile, database: str | Path) -> Iterator[bool]:
    """Yields True while this process holds the file's lock, False if another run holds it."""
    locks = work_dir(database) / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    fd = os.open(locks / f"{f.stem}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


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
    """Count one more try at this file version that ended in an error worth retrying; returns the tries so far."""
    with connect(database) as con:
        con.execute("begin transaction")
        attempts = con.execute(LEDGER["count_attempt"], [*f.key, error, run_id, datetime.now(UTC)]).fetchone()[0]
        con.execute("commit")
    return attempts
