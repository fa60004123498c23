"""Staging: stream an inbox file through validation and the extractor into result Parquet files.

Nothing here touches the database; a staged file is loaded in one transaction by load.py.
Errors that are the file's own (not Parquet, no text column, wrong types) raise FileError and
are final; an operating-system error while reading (a storage hiccup) propagates, and the run
retries the file later (pipeline.process_file).
"""

import hashlib
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .data import normalize_sentiment
from .extract import Extractor
from .inbox import InboxFile

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


def is_transient(exc: BaseException) -> bool:
    """An operating-system error while reading (EIO, ESTALE, a timeout of network storage): worth
    retrying, unlike a format error. Python and pyarrow set errno only for such errors; pyarrow's
    own format errors are ArrowInvalid, or an OSError without errno (a corrupt footer)."""
    return isinstance(exc, OSError) and exc.errno is not None


def sha256_of(path: Path) -> str:
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
        if is_transient(exc):
            raise
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
            if is_transient(exc):
                raise
            raise FileError(f"unreadable after row {rows_read}: {exc}") from exc
        rows_read += n
        yield decoded


def stage_file(f: InboxFile, extractor: Extractor, spans_path: Path, quarantine_path: Path,
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


