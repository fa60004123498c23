"""The extract-spans job, as plain functions: find new inbox files, run the model, load DuckDB.

Three steps with a hand-off between them, so many workers could run the middle one:
    claim   an inbox file (an flock on a lock file; the kernel drops it if the process dies)
    stage   stream the file in record batches: validate, extract, append to a result Parquet
    load    insert the staged results, the quarantined rows and the ledger row in ONE transaction
A file is therefore either fully in the database or not at all, and a re-run does exactly the rest.
"""

import fcntl
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from glob import glob
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .data import normalize_sentiment
from .errors import PathOutsideRoots
from .settings import checked_path
from .store import connect, ensure_schema

log = logging.getLogger(__name__)

ID_COLUMNS = ("id", "tweet_id", "textID")  # accepted names for the tweet id, first found wins
MAX_TEXT_CHARS = 2000  # tweets are at most 280 characters; far longer text is not a tweet
QUARANTINE_TEXT_CHARS = 1000

STAGED_SCHEMA = pa.schema([
    ("source_row", pa.int64()), ("tweet_id", pa.string()), ("text", pa.string()), ("sentiment", pa.string()),
    ("is_sentiment_given", pa.bool_()), ("sentiment_prob", pa.float64()), ("span", pa.string()),
    ("span_start", pa.int32()), ("span_end", pa.int32()), ("tweet_created_at", pa.string()),
    ("extra_columns", pa.string()), ("span_confidence", pa.float64()),
])
QUARANTINE_SCHEMA = pa.schema([
    ("source_row", pa.int64()), ("tweet_id", pa.string()), ("text", pa.string()),
    ("reason", pa.string()), ("detail", pa.string()),
])


class FileError(ValueError):
    """A whole inbox file cannot be used (not Parquet, no text column, wrong types); recorded in the ledger."""


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


@dataclass
class FileOutcome:
    path: str
    status: str  # done | failed | unchanged (same content as a done version) | skipped (left for later)
    rows_in: int = 0
    rows_stored: int = 0
    rows_quarantined: int = 0
    seconds: float = 0.0
    model_seconds: float = 0.0
    load_seconds: float = 0.0
    error: str | None = None


@dataclass
class RunSummary:
    run_id: str
    model_version: str
    files: list[FileOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for f in self.files if f.status == status)

    @property
    def rows_stored(self) -> int:
        return sum(f.rows_stored for f in self.files)

    @property
    def rows_quarantined(self) -> int:
        return sum(f.rows_quarantined for f in self.files)

    @property
    def rows_in(self) -> int:
        return sum(f.rows_in for f in self.files)

    def totals(self) -> dict:
        """The run in one flat record: counts of files and rows, time and throughput."""
        return {
            "run_id": self.run_id,
            "model_version": self.model_version,
            "files_done": self.count("done"),
            "files_failed": self.count("failed"),
            "files_skipped": self.count("skipped"),
            "rows_in": self.rows_in,
            "rows_stored": self.rows_stored,
            "rows_quarantined": self.rows_quarantined,
            "seconds": round(self.seconds, 2),
            "tweets_per_second": round(self.rows_in / self.seconds, 1) if self.seconds else 0.0,
        }


def new_run_id() -> str:
    return uuid.uuid4().hex


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
        raise FileNotFoundError(f"{inbox}: inbox is neither a directory, a file, nor a glob that matches")
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


def is_in_ledger(f: InboxFile, database: str | Path) -> bool:
    with connect(database) as con:
        row = con.execute(
            "select 1 from processed_files where file_path = $1 and size_bytes = $2 and mtime_ns = $3", list(f.key)
        ).fetchone()
    return row is not None


# ---- stage ----------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _open_parquet(path: Path) -> tuple[pq.ParquetFile, str, str | None, str | None]:
    """The Parquet file and its id, sentiment and created_at columns; FileError if it cannot be used."""
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...: all mean "not readable Parquet"
        raise FileError(f"not a readable Parquet file: {exc}") from exc
    schema = parquet.schema_arrow
    names = schema.names
    if "text" not in names:
        raise FileError(f"no text column (columns: {', '.join(names)})")
    text_type = schema.field("text").type
    if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)
            or pa.types.is_binary(text_type) or pa.types.is_large_binary(text_type)):
        raise FileError(f"column text has type {text_type}, expected a string")
    id_column = next((c for c in ID_COLUMNS if c in names), None)
    if id_column is None:
        raise FileError(f"no id column (one of {', '.join(ID_COLUMNS)}; columns: {', '.join(names)})")
    id_type = schema.field(id_column).type
    if not (pa.types.is_string(id_type) or pa.types.is_large_string(id_type) or pa.types.is_integer(id_type)):
        raise FileError(f"column {id_column} has type {id_type}, expected a string or an integer")
    sentiment = "sentiment" if "sentiment" in names else None
    created = "created_at" if "created_at" in names else None
    return parquet, id_column, sentiment, created


def _decode_texts(column: pa.Array) -> list[str | bytes | None]:
    """Python strings; bytes for values that are not valid UTF-8 (quarantined by the caller)."""
    binary = column.cast(pa.large_binary()) if not pa.types.is_large_binary(column.type) else column
    try:
        return binary.cast(pa.large_string()).to_pylist()  # validates all of it at once: the fast path
    except pa.ArrowInvalid:
        out: list[str | bytes | None] = []
        for value in binary.to_pylist():
            try:
                out.append(value.decode("utf-8") if value is not None else None)
            except UnicodeDecodeError:
                out.append(value)
        return out


def _check_row(tweet_id, text, sentiment_raw, max_chars: int) -> tuple[tuple[str, str | None] | None, str | None]:
    """((reason, detail), None) for a row that cannot be processed, else (None, its sentiment or None)."""
    if tweet_id is None or not tweet_id.strip():
        return ("missing id", None), None
    if text is None:
        return ("null text", None), None
    if isinstance(text, bytes):
        return ("text is not valid UTF-8", None), None
    if not text.strip():
        return ("empty text", None), None
    if len(text) > max_chars:
        return ("text too long", f"{len(text)} characters, limit {max_chars}"), None
    try:
        return None, normalize_sentiment(sentiment_raw)
    except ValueError:
        return ("unknown sentiment", repr(sentiment_raw)[:100]), None


def _as_text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")[:QUARANTINE_TEXT_CHARS]
    return value[:QUARANTINE_TEXT_CHARS]


def _read_batches(parquet: pq.ParquetFile, id_column: str, sentiment_column: str | None,
                  created_column: str | None, extra_columns: list[str], batch_rows: int):
    """Decoded columns of each record batch. Only reading and decoding are wrapped: an error there
    is the file's fault (FileError); errors downstream (model, disk) propagate and the file stays pending."""
    batches = parquet.iter_batches(batch_size=batch_rows)
    rows_read = 0
    while True:
        try:
            batch = next(batches, None)
            if batch is None:
                return
            n = batch.num_rows
            decoded = (
                n,
                pc.cast(batch.column(id_column), pa.string()).to_pylist(),
                _decode_texts(batch.column("text")),
                pc.cast(batch.column(sentiment_column), pa.string()).to_pylist() if sentiment_column else [None] * n,
                pc.cast(batch.column(created_column), pa.string()).to_pylist() if created_column else [None] * n,
                _extra_json(batch, extra_columns),
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise FileError(f"unreadable after row {rows_read}: {exc}") from exc
        rows_read += n
        yield decoded


def stage_file(f: InboxFile, extractor, spans_path: Path, quarantine_path: Path,
               batch_rows: int = 4096, max_chars: int = MAX_TEXT_CHARS) -> tuple[int, float]:
    """Stream the file batch by batch through validation and the extractor into two Parquet files.

    Returns (rows read, seconds spent in the extractor). Raises FileError if the file is unusable.
    """
    parquet, id_column, sentiment_column, created_column = _open_parquet(f.path)
    # created_at stays in extra_columns too: its raw value survives when it is no timestamp DuckDB can read
    extra_columns = [n for n in parquet.schema_arrow.names if n not in {id_column, "text", sentiment_column}]
    rows_read = 0
    model_seconds = 0.0
    with pq.ParquetWriter(spans_path, STAGED_SCHEMA) as spans_out, \
            pq.ParquetWriter(quarantine_path, QUARANTINE_SCHEMA) as quarantine_out:
        for n, ids, texts, raw_sentiments, created, extra in _read_batches(
                parquet, id_column, sentiment_column, created_column, extra_columns, batch_rows):
            first_row = rows_read + 1
            rows_read += n
            good: list[int] = []
            given: list[str | None] = []
            bad_rows, bad_ids, bad_texts, reasons, details = [], [], [], [], []
            for i in range(n):
                problem, sentiment = _check_row(ids[i], texts[i], raw_sentiments[i], max_chars)
                if problem is None:
                    good.append(i)
                    given.append(sentiment)
                else:
                    bad_rows.append(first_row + i)
                    bad_ids.append(ids[i])
                    bad_texts.append(_as_text(texts[i]))
                    reasons.append(problem[0])
                    details.append(problem[1])
            if bad_rows:
                quarantine_out.write_table(pa.table(
                    [bad_rows, bad_ids, bad_texts, reasons, details], schema=QUARANTINE_SCHEMA))
            if not good:
                continue
            good_texts = [texts[i] for i in good]
            started = time.perf_counter()
            results = extractor.extract(good_texts, given)
            model_seconds += time.perf_counter() - started
            spans_out.write_table(pa.table([
                [first_row + i for i in good],
                [ids[i] for i in good],
                good_texts,
                [r.sentiment for r in results],
                [r.sentiment_given for r in results],
                [r.sentiment_prob for r in results],
                [r.span for r in results],
                [r.start for r in results],
                [r.end for r in results],
                [created[i] for i in good],
                [extra[i] for i in good] if extra is not None else [None] * len(good),
                [r.span_confidence for r in results],
            ], schema=STAGED_SCHEMA))
    return rows_read, model_seconds


def _extra_json(batch: pa.RecordBatch, columns: list[str]) -> list[str] | None:
    """The raw tweet's other columns as one JSON object per row (kept, never dropped)."""
    if not columns:
        return None
    values = {c: batch.column(c).to_pylist() for c in columns}
    return [json.dumps({c: values[c][i] for c in columns}, default=str, ensure_ascii=False)
            for i in range(batch.num_rows)]


# ---- load -----------------------------------------------------------------------------------

LOAD_SQL = """
create or replace temp table staged as
select s.*,
       row_number() over (partition by s.tweet_id order by s.source_row) as copy_number,
       cast(null as varchar) as stored_in
from read_parquet($spans) as s;

update staged
set stored_in = earlier.source_file
from (
    select tweet_id, min(source_file) as source_file
    from spans
    where tweet_id in (select tweet_id from staged)  -- probe spans with this file's ids only
    group by tweet_id
) as earlier
where staged.tweet_id = earlier.tweet_id;

-- rows quarantined while staging: their text is already cut to QUARANTINE_TEXT_CHARS
insert into quarantine
select $source_file, source_row, tweet_id, text, reason, detail, $run_id, $now
from read_parquet($quarantine);

insert into quarantine
select $source_file, source_row, tweet_id, left(text, $text_chars),
       case when copy_number > 1 then 'duplicate id in file' else 'duplicate id already stored' end,
       case when copy_number > 1 then 'first at an earlier row' else 'stored from ' || stored_in end,
       $run_id, $now
from staged
where copy_number > 1 or stored_in is not null;

insert into spans by name
select tweet_id, text, sentiment, is_sentiment_given, sentiment_prob, span, span_start, span_end,
       $model_version as model_version, $source_file as source_file, source_row, $run_id as run_id,
       $now as processed_at, try_cast(tweet_created_at as timestamptz) as tweet_created_at,
       cast(extra_columns as json) as extra_columns, span_confidence
from staged
where copy_number = 1 and stored_in is null;
"""

# DuckDB's buffer pool for a load: small and fixed, spilling to disk beyond it, so that the
# process's memory does not grow with the size of an inbox file (bench/stream_memory.py).
LOAD_MEMORY_LIMIT = os.environ.get("SPAN_JOBS_LOAD_MEMORY_LIMIT", "64MB")


def load_file(f: InboxFile, database: str | Path, spans_path: Path, quarantine_path: Path,
              rows_in: int, model_version: str, run_id: str, sha256: str) -> tuple[int, int]:
    """Insert a staged file and its ledger row in one transaction; returns (stored, quarantined)."""
    now = datetime.now(UTC)
    params = {"spans": str(spans_path), "quarantine": str(quarantine_path), "source_file": str(f.path),
              "run_id": run_id, "now": now, "model_version": model_version, "text_chars": QUARANTINE_TEXT_CHARS}
    spill = work_dir(database) / "duckdb-spill"
    with connect(database, memory_limit=LOAD_MEMORY_LIMIT) as con:
        con.execute("set temp_directory = $1", [str(spill)])
        con.execute("set preserve_insertion_order = false")  # lets inserts stream instead of buffer
        con.execute("begin transaction")
        try:
            for statement in [s for s in LOAD_SQL.split(";\n") if s.strip()]:
                con.execute(statement, {k: v for k, v in params.items() if f"${k}" in statement})
            # counted from this load's own inputs, not by (file, run): a retried run reuses its run id
            stored, duplicates = con.execute(
                "select count(*) filter (where copy_number = 1 and stored_in is null), "
                "count(*) filter (where copy_number > 1 or stored_in is not null) from staged"
            ).fetchone()
            quarantined = duplicates + con.execute(
                "select count(*) from read_parquet($1)", [str(quarantine_path)]).fetchone()[0]
            if stored + quarantined != rows_in:
                raise RuntimeError(f"{f.path}: {rows_in} rows read but {stored} stored + {quarantined} quarantined")
            con.execute(
                "insert into processed_files values ($1, $2, $3, $4, 'done', $5, $6, $7, null, $8, $9, $10)",
                [*f.key, sha256, rows_in, stored, quarantined, model_version, run_id, now],
            )
            con.execute("drop table staged")
            con.execute("commit")
        except BaseException:
            try:
                con.execute("rollback")
            except duckdb.Error:  # the failed statement may have ended the transaction already
                pass
            raise
    return stored, quarantined


def record_outcome(f: InboxFile, database: str | Path, status: str, error: str, run_id: str,
                   sha256: str | None) -> None:
    """A ledger row for a file version that stores nothing: failed (a file-level error) or unchanged."""
    with connect(database) as con:
        con.execute("begin transaction")
        con.execute(
            "insert into processed_files values ($1, $2, $3, $4, $5, null, 0, 0, $6, null, $7, $8)",
            [*f.key, sha256, status, error, run_id, datetime.now(UTC)],
        )
        con.execute("commit")


def _is_done_with_same_content(f: InboxFile, sha256: str, database: str | Path) -> bool:
    with connect(database) as con:
        return con.execute("select 1 from processed_files where file_path = $1 and sha256 = $2 and status = 'done'",
                           [str(f.path), sha256]).fetchone() is not None


# ---- one file, end to end -------------------------------------------------------------------

def process_file(f: InboxFile, extractor, database: str | Path, run_id: str,
                 batch_rows: int = 4096, max_chars: int = MAX_TEXT_CHARS) -> FileOutcome:
    """Claim, stage and load one inbox file. Model errors propagate: the file stays pending."""
    started = time.perf_counter()
    with claim(f, database) as claimed:
        if not claimed:
            log.info("%s: another run is processing it; skipping", f.path)
            return FileOutcome(str(f.path), "skipped")
        if is_in_ledger(f, database):  # finished by another run since discovery
            return FileOutcome(str(f.path), "skipped")
        try:
            checked_path(f.path, "inbox file")  # a symbolic link in the inbox may point anywhere
        except PathOutsideRoots as exc:
            record_outcome(f, database, "failed", str(exc), run_id, None)
            return FileOutcome(str(f.path), "failed", error=str(exc))
        stage = work_dir(database) / "staging"
        stage.mkdir(parents=True, exist_ok=True)
        spans_path, quarantine_path = stage / f"{f.stem}.spans.parquet", stage / f"{f.stem}.quarantine.parquet"
        try:
            try:
                sha256 = _sha256(f.path)
                if _is_done_with_same_content(f, sha256, database):  # touched or copied again: nothing new
                    record_outcome(f, database, "unchanged", "same content as a version already done", run_id, sha256)
                    return FileOutcome(str(f.path), "unchanged", seconds=time.perf_counter() - started)
                rows_in, model_seconds = stage_file(f, extractor, spans_path, quarantine_path, batch_rows, max_chars)
                changed = InboxFile.of(f.path).key != f.key
            except FileNotFoundError:
                changed = True
            except FileError as exc:
                log.warning("%s: %s", f.path, exc)
                record_outcome(f, database, "failed", str(exc), run_id, sha256)
                return FileOutcome(str(f.path), "failed", error=str(exc), seconds=time.perf_counter() - started)
            if changed:  # rewritten or removed while we read it: the next run sees its new version
                log.warning("%s: changed while being processed; leaving it for the next run", f.path)
                return FileOutcome(str(f.path), "skipped", error="changed while being processed")
            load_started = time.perf_counter()
            stored, quarantined = load_file(f, database, spans_path, quarantine_path, rows_in,
                                            extractor.version, run_id, sha256)
            outcome = FileOutcome(str(f.path), "done", rows_in, stored, quarantined,
                                  seconds=time.perf_counter() - started, model_seconds=model_seconds,
                                  load_seconds=time.perf_counter() - load_started)
            log.info("%s: %d rows, %d stored, %d quarantined in %.1fs", f.path, rows_in, stored, quarantined,
                     outcome.seconds)
            return outcome
        finally:
            spans_path.unlink(missing_ok=True)
            quarantine_path.unlink(missing_ok=True)


def run_extract(inbox: str | Path, database: str | Path, extractor, run_id: str | None = None,
                batch_rows: int = 4096, settle_seconds: float = 0.0, max_chars: int = MAX_TEXT_CHARS,
                on_file: Callable[[FileOutcome, int, int], None] | None = None) -> RunSummary:
    """Process every new inbox file with one extractor (one model version for the whole run).

    The one extract driver: `span-jobs extract` and the extract-spans flow both run it.
    ``on_file(outcome, files finished, files in this run)`` is called after each file (progress).
    """
    started = time.perf_counter()
    summary = RunSummary(run_id or new_run_id(), extractor.version)
    files = discover(inbox, database, settle_seconds)
    log.info("run %s: %d new file(s) in %s, model %s", summary.run_id, len(files), inbox, extractor.version)
    for i, f in enumerate(files, start=1):
        outcome = process_file(f, extractor, database, summary.run_id, batch_rows, max_chars)
        if outcome.status == "failed":
            log.warning("%s: file-level error recorded in the ledger: %s", f.path, outcome.error)
        summary.files.append(outcome)
        if on_file is not None:
            on_file(outcome, i, len(files))
    summary.seconds = time.perf_counter() - started
    return summary
