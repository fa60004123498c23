"""Loading: a staged inbox file, its quarantined rows and its ledger row go into DuckDB in ONE transaction.

So a file is either fully in the database or not at all, and a re-run does exactly the rest.
The statements are sql/load.sql's, run by name in order.
"""

import os
import re
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from .inbox import InboxFile
from .staging import QUARANTINE_TEXT_CHARS
from .store import connect, named_statements, work_dir

LOAD = named_statements("load")
LOAD_STEPS = ("stage", "find_stored_ids", "quarantine_staged", "quarantine_duplicates", "insert_spans")

# DuckDB's buffer pool for a load: small and fixed, spilling to disk beyond it, so that the
# process's memory does not grow with the size of an inbox file (bench/stream_memory.py).
LOAD_MEMORY_LIMIT = os.environ.get("SPAN_JOBS_LOAD_MEMORY_LIMIT", "64MB")


class ReconciliationError(RuntimeError):
    """A load whose rows stored plus rows quarantined differ from the rows read: rolled back, retried later."""


def _bound(statement: str, params: dict) -> dict:
    """The parameters one statement uses (DuckDB refuses unused named parameters)."""
    return {k: v for k, v in params.items() if re.search(rf"\${k}\b", statement)}


def load_file(f: InboxFile, database: str | Path, spans_path: Path, quarantine_path: Path,
              rows_in: int, model_version: str, run_id: str, sha256: str) -> tuple[int, int]:
    """Insert a staged file and its ledger row in one transaction; returns (stored, quarantined)."""
    params = {"spans": str(spans_path), "quarantine": str(quarantine_path), "source_file": str(f.path),
              "size_bytes": f.size_bytes, "mtime_ns": f.mtime_ns, "sha256": sha256, "rows_in": rows_in,
              "run_id": run_id, "now": datetime.now(UTC), "model_version": model_version,
              "text_chars": QUARANTINE_TEXT_CHARS}
    with connect(database, memory_limit=LOAD_MEMORY_LIMIT) as con:
        con.execute("set temp_directory = $1", [str(work_dir(database) / "duckdb-spill")])
        con.execute("set preserve_insertion_order = false")  # lets inserts stream instead of buffer
        con.execute("begin transaction")
        try:
            for step in LOAD_STEPS:
                con.execute(LOAD[step], _bound(LOAD[step], params))
            stored, quarantined = con.execute(LOAD["count_outcome"], _bound(LOAD["count_outcome"], params)).fetchone()
            if stored + quarantined != rows_in:
                raise ReconciliationError(f"{rows_in} rows read but {stored} stored + {quarantined} quarantined")
            params.update(stored=stored, quarantined=quarantined)
            con.execute(LOAD["insert_ledger"], _bound(LOAD["insert_ledger"], params))
            con.execute(LOAD["drop_staged"])
            con.execute("commit")
        except BaseException:
            try:
                con.execute("rollback")
            except duckdb.Error:  # the failed statement may have ended the transaction already
                pass
            raise
    return stored, quarantined
