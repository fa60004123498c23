"""Reading labeled and raw tweets, checking them, and the fixed validation split."""

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import DataError

log = logging.getLogger(__name__)

SENTIMENTS = ("negative", "neutral", "positive")
LABELED_COLUMNS = ("textID", "text", "selected_text", "sentiment")
DATA_SUFFIXES = (".csv", ".parquet")


@dataclass(frozen=True, slots=True)
class LabeledTweet:
    tweet_id: str
    text: str
    selected_text: str
    sentiment: str


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A row that cannot be used, with where it came from and why."""

    source: str
    row_number: int  # 1-based data row, header not counted
    reason: str


@dataclass
class LabeledData:
    tweets: list[LabeledTweet]
    rejected: list[RejectedRow]

    def digest(self) -> str:
        """sha256 over the usable rows, order-independent: the same data gives the same digest."""
        h = hashlib.sha256()
        for t in sorted(self.tweets, key=lambda t: (t.tweet_id, t.text)):
            h.update("\x1f".join((t.tweet_id, t.text, t.selected_text, t.sentiment)).encode("utf-8", "surrogatepass"))
            h.update(b"\x1e")
        return h.hexdigest()


def data_files(path: str | Path) -> list[Path]:
    """The data files behind a path: the file itself, or the .csv/.parquet files of a directory."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in DATA_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"{path}: no .csv or .parquet files in this directory")
        return files
    if not path.exists():
        raise DataError(f"{path}: no such file")
    return [path]


def read_table(path: str | Path) -> pa.Table:
    """A CSV or Parquet file as an Arrow table: CSV cells all strings (empty ones empty, not missing),
    Parquet columns with their own types (not through pandas, which turns integers with a null into floats)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        if path.suffix.lower() == ".parquet":
            return pq.ParquetFile(path).read()
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        return pa.Table.from_pandas(frame, preserve_index=False)
    except Exception as exc:  # pandas/pyarrow raise many types; all mean "unreadable"
        raise DataError(f"{path}: cannot read as {path.suffix.lstrip('.') or 'CSV'}: {exc}") from exc


def _require_columns(table: pa.Table, columns: tuple[str, ...], path: Path) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        found = ", ".join(table.column_names)
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found {found}")


def check_labeled_row(tweet_id: object, text: object, selected: object, sentiment: object) -> str | None:
    """Why a labeled row cannot be used, or None when it can."""
    if not isinstance(tweet_id, str) or not tweet_id.strip():
        return "missing textID"
    if not isinstance(text, str) or not text.strip():
        return "empty text"
    if sentiment not in SENTIMENTS:
        return f"unknown sentiment {sentiment!r}"
    if not isinstance(selected, str) or not selected.strip():
        return "empty selected_text"
    if selected not in text:
        return "selected_text is not a substring of text"
    return None


def read_labeled(path: str | Path | Sequence[str | Path]) -> LabeledData:
    """Labeled tweets from a Kaggle CSV, a Parquet file, a directory of them, or several of those.

    Unusable rows are returned in ``rejected`` (and logged), never silently dropped.
    A repeated textID keeps its first row; the others are rejected as duplicates. A file named
    twice (a new file that is also in the directory given) is read once.
    """
    tweets: list[LabeledTweet] = []
    rejected: list[RejectedRow] = []
    seen: set[str] = set()
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    files = {f.resolve(): f for p in paths for f in data_files(p)}  # insertion order: as given
    for file in files.values():
        table = read_table(file)
        _require_columns(table, LABELED_COLUMNS, file)
        columns = [table.column(c).to_pylist() for c in LABELED_COLUMNS]
        for row_number, (tid, text, selected, sentiment) in enumerate(zip(*columns), start=1):
            tid = str(tid) if isinstance(tid, (int, float)) and tid == tid else tid  # not NaN
            if isinstance(sentiment, str):
                sentiment = sentiment.strip().lower()
            reason = check_labeled_row(tid, text, selected, sentiment)
            if reason is None and tid in seen:
                reason = f"duplicate textID {tid}"
            if reason is not None:
                rejected.append(RejectedRow(str(file), row_number, reason))
                continue
            seen.add(tid)
            tweets.append(LabeledTweet(tid, text, selected, sentiment))
    for r in rejected[:20]:
        log.warning("skipping %s row %d: %s", r.source, r.row_number, r.reason)
    if len(rejected) > 20:
        log.warning("... and %d more unusable rows", len(rejected) - 20)
    if not tweets:
        raise DataError(f"{', '.join(map(str, paths))}: no usable labeled rows ({len(rejected)} rejected)")
    return LabeledData(tweets, rejected)


def is_validation(tweet_id: str, percent: int = 10) -> bool:
    """True for the fixed validation share of tweets: a hash of the id, the same in every run."""
    digest = hashlib.sha256(tweet_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < percent


def validation_part(tweet_id: str) -> str:
    """Which fixed half of the validation split a tweet is in: "choice" (where temperatures and decision
    parameters are fitted) or "report" (where figures are reported). Another hash than is_validation's,
    so the halves are independent of the split itself."""
    digest = hashlib.sha256(tweet_id.encode("utf-8", "surrogatepass")).digest()
    return VALIDATION_PARTS[int.from_bytes(digest[8:16], "big") % 2]


VALIDATION_PARTS = ("choice", "report")


def split_validation_parts(tweets: list[LabeledTweet]) -> tuple[list[LabeledTweet], list[LabeledTweet]]:
    """(choice, report) halves of validation tweets, fixed by id hash."""
    return ([t for t in tweets if validation_part(t.tweet_id) == "choice"],
            [t for t in tweets if validation_part(t.tweet_id) == "report"])


def split_train_validation(
    tweets: list[LabeledTweet], percent: int = 10
) -> tuple[list[LabeledTweet], list[LabeledTweet]]:
    train = [t for t in tweets if not is_validation(t.tweet_id, percent)]
    validation = [t for t in tweets if is_validation(t.tweet_id, percent)]
    return train, validation


def select_split(tweets: list[LabeledTweet], split: str, percent: int = 10) -> list[LabeledTweet]:
    """The tweets of a named split: all, train, validation, validation-choice or validation-report."""
    if split == "all":
        return tweets
    train, validation = split_train_validation(tweets, percent)
    parts = {"train": train, "validation": validation}
    if split.startswith("validation-"):
        choice, report = split_validation_parts(validation)
        parts.update({"validation-choice": choice, "validation-report": report})
    if split not in parts:
        raise ValueError(f"unknown split {split!r}")
    return parts[split]


def read_raw(path: str | Path, id_column: str = "id") -> pa.Table:
    """Raw tweets (an id and ``text``; ``sentiment`` optional) for prediction, columns as in the file.

    ``textID`` is accepted for the id, as in the Kaggle files.
    """
    path = Path(path)
    table = read_table(path)
    if id_column not in table.column_names and "textID" in table.column_names:
        id_column = "textID"
    _require_columns(table, (id_column, "text"), path)
    return table


def normalize_sentiment(value: object) -> str | None:
    """A known label ("Positive " -> "positive"), or None when missing; ValueError for anything else."""
    if value is None or (isinstance(value, float) and value != value):  # None or NaN: missing
        return None
    if not isinstance(value, str):
        raise ValueError(f"unknown sentiment {value!r}")
    label = value.strip().lower()
    if not label:
        return None
    if label not in SENTIMENTS:
        raise ValueError(f"unknown sentiment {value!r}")
    return label
