"""Predicting spans for a whole file of tweets (the `predict` command)."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .data import DataError, normalize_sentiment, read_raw
from .extract import annotate, make_extractor

# each prediction column's type, whatever its values (a file of given sentiments has no probabilities)
PREDICTION_TYPES = {"sentiment": pa.string(), "is_sentiment_given": pa.bool_(), "sentiment_prob": pa.float64(),
                    "span": pa.string(), "span_start": pa.int64(), "span_end": pa.int64(),
                    "span_confidence": pa.float64(), "model_version": pa.string()}


def predict_file(input_path: Path, output_path: Path, model_spec: str, registry: Path | None = None,
                 device: str = "auto", token_budget: int | None = None, decoding: str = "expected-jaccard",
                 precision: str = "auto") -> int:
    """Read tweets, predict, write Parquet with the prediction columns added; returns rows written.

    A file with empty texts or unknown sentiment labels is refused with the row named, since a
    prediction file must have one answer per input row.
    """
    table = read_raw(input_path)
    texts = table.column("text").to_pylist()
    for row, text in enumerate(texts, start=1):
        if not isinstance(text, str):
            raise DataError(f"{input_path}: row {row}: text is {text!r}, not a string")
    sentiments = []
    given = table.column("sentiment").to_pylist() if "sentiment" in table.column_names else [None] * len(texts)
    for row, value in enumerate(given, start=1):
        try:
            sentiments.append(normalize_sentiment(value))
        except ValueError as exc:
            raise DataError(f"{input_path}: row {row}: {exc}") from exc
    extractor = make_extractor(model_spec, registry, device=device, token_budget=token_budget, progress=True,
                               decoding=decoding, precision=precision)
    predictions = annotate(extractor, texts, sentiments)
    # the input's other columns as they are (Arrow types, not through pandas); the prediction columns
    # come last and replace any of the same name (the given sentiment is in the predicted one)
    table = table.drop_columns([name for name in predictions if name in table.column_names])
    for name, values in predictions.items():
        table = table.append_column(name, pa.array(values, type=PREDICTION_TYPES[name]))
    output_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, output_path)
    return table.num_rows
