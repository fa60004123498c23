"""Predicting spans for a whole file of tweets (the `predict` command)."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .data import DataError, normalize_sentiment, read_raw
from .extract import annotate, make_extractor


def predict_file(input_path: Path, output_path: Path, model_spec: str, registry: Path | None = None,
                 device: str = "auto", token_budget: int | None = None, decoding: str = "expected-jaccard",
                 precision: str = "auto") -> int:
    """Read tweets, predict, write Parquet with the prediction columns added; returns rows written.

    A file with empty texts or unknown sentiment labels is refused with the row named, since a
    prediction file must have one answer per input row.
    """
    frame = read_raw(input_path)
    texts = frame["text"].tolist()
    for row, text in enumerate(texts, start=1):
        if not isinstance(text, str):
            raise DataError(f"{input_path}: row {row}: text is {text!r}, not a string")
    sentiments = []
    given = frame["sentiment"].tolist() if "sentiment" in frame.columns else [None] * len(frame)
    for row, value in enumerate(given, start=1):
        try:
            sentiments.append(normalize_sentiment(value))
        except ValueError as exc:
            raise DataError(f"{input_path}: row {row}: {exc}") from exc
    extractor = make_extractor(model_spec, registry, device=device, token_budget=token_budget, progress=True,
                               decoding=decoding, precision=precision)
    frame = frame.drop(columns=[c for c in ("sentiment",) if c in frame.columns])
    for name, values in annotate(extractor, texts, sentiments).items():
        frame[name] = values
    output_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), output_path)
    return len(frame)
