"""The extract-spans job: every new inbox file claimed, staged and loaded, each exactly once.

    discover, claim   inbox.py   new file versions; an flock per file (dropped by the kernel if we die)
    stage             staging.py stream the file through validation and the extractor into Parquet
    load              load.py    staged rows, quarantined rows and the ledger row in ONE transaction

run_extract is the one driver: `span-jobs extract` and the extract-spans flow both call it.
"""

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PathOutsideRoots
from .extract import Extractor
from .inbox import InboxFile, claim, discover, is_done_with_same_content, is_in_ledger, record_attempt, \
    record_outcome
from .load import ReconciliationError, load_file
from .settings import checked_path
from .staging import MAX_TEXT_CHARS, FileError, is_transient, sha256_of, stage_file
from .store import work_dir

log = logging.getLogger(__name__)

# Tries at a file version that end in an error worth retrying (a storage read error, a load that
# does not reconcile) before it is given up on with a failed ledger row: a hiccup of network
# storage passes within a run or two; an error that outlasts three runs needs a person.
MAX_ATTEMPTS = 3


@dataclass
class FileOutcome:
    path: str
    # done | failed | unchanged (same content as a done version) | skipped (another run has it, or it
    # changed while read) | retry (an error worth retrying; the next run tries again)
    status: str
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
            "files_to_retry": self.count("retry"),
            "rows_in": self.rows_in,
            "rows_stored": self.rows_stored,
            "rows_quarantined": self.rows_quarantined,
            "seconds": round(self.seconds, 2),
            "tweets_per_second": round(self.rows_in / self.seconds, 1) if self.seconds else 0.0,
        }


def new_run_id() -> str:
    return uuid.uuid4().hex


def _retry_or_give_up(f: InboxFile, database: str | Path, error: str, run_id: str, sha256: str | None,
                      max_attempts: int, started: float) -> FileOutcome:
    """Count the failed try; below the limit the file stays pending, at it the ledger records it failed."""
    attempts = record_attempt(f, database, error, run_id)
    if attempts >= max_attempts:
        reason = f"gave up after {attempts} attempts: {error}"
        log.error("%s: %s", f.path, reason)
        record_outcome(f, database, "failed", reason, run_id, sha256)
        return FileOutcome(str(f.path), "failed", error=reason, seconds=time.perf_counter() - started)
    log.warning("%s: %s (attempt %d of %d; the next run tries again)", f.path, error, attempts, max_attempts)
    return FileOutcome(str(f.path), "retry", error=f"attempt {attempts} of {max_attempts}: {error}",
                       seconds=time.perf_counter() - started)


def process_file(f: InboxFile, extractor: Extractor, database: str | Path, run_id: str,
                 batch_rows: int = 4096, max_chars: int = MAX_TEXT_CHARS,
                 max_attempts: int = MAX_ATTEMPTS) -> FileOutcome:
    """Claim, stage and load one inbox file.

    A file's own errors (format, schema) are final: a failed ledger row. Errors worth retrying
    (storage read errors, a load that does not reconcile) leave it pending for the next run, up
    to ``max_attempts`` tries. Model errors propagate: the run stops and the file stays pending.
    """
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
            claimed.confirm()  # before every ledger write: a lost claim may be another worker's now
            record_outcome(f, database, "failed", str(exc), run_id, None)
            return FileOutcome(str(f.path), "failed", error=str(exc))
        stage = work_dir(database) / "staging"
        stage.mkdir(parents=True, exist_ok=True)
        spans_path, quarantine_path = stage / f"{f.stem}.spans.parquet", stage / f"{f.stem}.quarantine.parquet"
        sha256 = None
        try:
            try:
                sha256 = sha256_of(f.path)
                if is_done_with_same_content(f, sha256, database):  # touched or copied again: nothing new
                    claimed.confirm()
                    record_outcome(f, database, "unchanged", "same content as a version already done", run_id, sha256)
                    return FileOutcome(str(f.path), "unchanged", seconds=time.perf_counter() - started)
                rows_in, model_seconds = stage_file(f, extractor, spans_path, quarantine_path, batch_rows, max_chars)
                changed = InboxFile.of(f.path).key != f.key
            except FileNotFoundError:
                changed = True
            except FileError as exc:
                log.warning("%s: %s", f.path, exc)
                claimed.confirm()
                record_outcome(f, database, "failed", str(exc), run_id, sha256)
                return FileOutcome(str(f.path), "failed", error=str(exc), seconds=time.perf_counter() - started)
            except OSError as exc:
                if not is_transient(exc):
                    raise
                claimed.confirm()
                return _retry_or_give_up(f, database, f"read error: {exc}", run_id, sha256, max_attempts, started)
            if changed:  # rewritten or removed while we read it: the next run sees its new version
                log.warning("%s: changed while being processed; leaving it for the next run", f.path)
                return FileOutcome(str(f.path), "skipped", error="changed while being processed")
            load_started = time.perf_counter()
            claimed.confirm()  # a lake's claim can be lost with its session (a restart): then load nothing
            try:
                stored, quarantined = load_file(f, database, spans_path, quarantine_path, rows_in,
                                                extractor.version, run_id, sha256)
            except ReconciliationError as exc:
                claimed.confirm()
                return _retry_or_give_up(f, database, f"load did not reconcile: {exc}", run_id, sha256,
                                         max_attempts, started)
            outcome = FileOutcome(str(f.path), "done", rows_in, stored, quarantined,
                                  seconds=time.perf_counter() - started, model_seconds=model_seconds,
                                  load_seconds=time.perf_counter() - load_started)
            log.info("%s: %d rows, %d stored, %d quarantined in %.1fs", f.path, rows_in, stored, quarantined,
                     outcome.seconds)
            return outcome
        finally:
            spans_path.unlink(missing_ok=True)
            quarantine_path.unlink(missing_ok=True)


def run_extract(inbox: str | Path, database: str | Path, extractor: Extractor, run_id: str | None = None,
                batch_rows: int = 4096, settle_seconds: float = 0.0, max_chars: int = MAX_TEXT_CHARS,
                on_file: Callable[[FileOutcome, int, int], None] | None = None,
                max_attempts: int = MAX_ATTEMPTS) -> RunSummary:
    """Process every new inbox file with one extractor (one model version for the whole run).

    ``on_file(outcome, files finished, files in this run)`` is called after each file (progress).
    """
    started = time.perf_counter()
    summary = RunSummary(run_id or new_run_id(), extractor.version)
    files = discover(inbox, database, settle_seconds)
    log.info("run %s: %d new file(s) in %s, model %s", summary.run_id, len(files), inbox, extractor.version)
    for i, f in enumerate(files, start=1):
        outcome = process_file(f, extractor, database, summary.run_id, batch_rows, max_chars, max_attempts)
        if outcome.status == "failed":
            log.warning("%s: file-level error recorded in the ledger: %s", f.path, outcome.error)
        summary.files.append(outcome)
        if on_file is not None:
            on_file(outcome, i, len(files))
    summary.seconds = time.perf_counter() - started
    return summary
