"""The demo's pieces: a sample inbox and a model that works offline."""

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .data import LabeledData
from .model import WEIGHTS_FILE, default_model_ships
from .synthetic import synthetic_tweets
from .train import TrainConfig, train

log = logging.getLogger(__name__)


def make_sample_inbox(inbox: Path, files: int = 3, rows_per_file: int = 200, seed: int = 7) -> list[Path]:
    """Parquet files of made-up tweets over several days; some lack a sentiment, two rows are bad."""
    inbox.mkdir(parents=True, exist_ok=True)
    written = []
    start = datetime(2026, 11, 24, 9, tzinfo=UTC)
    for f in range(files):
        tweets = synthetic_tweets(rows_per_file, seed=seed + f, prefix="demo")
        ids = [t.tweet_id for t in tweets]
        texts = [t.text for t in tweets]
        sentiments = [t.sentiment if i % 4 else None for i, t in enumerate(tweets)]  # a quarter to be tagged
        if f == 0:
            texts[5] = "   "  # whitespace only: quarantined
            sentiments[6] = "ecstatic"  # unknown label: quarantined
        created = [start + timedelta(days=f * 2 + i % 2, minutes=i) for i in range(rows_per_file)]
        table = pa.table({"id": ids, "text": texts, "sentiment": sentiments,
                          "created_at": pa.array(created, pa.timestamp("us", tz="UTC")),
                          "lang": ["en"] * rows_per_file})
        path = inbox / f"tweets-{f:03d}.parquet"
        tmp = inbox / f".{path.name}.tmp"  # write, then rename: the pipeline never sees half a file
        pq.write_table(table, tmp)
        tmp.rename(path)
        written.append(path)
    return written


def demo_model(workdir: Path) -> str:
    """The shipped default model, or else a tiny one trained here on made-up tweets (about a minute on CPU)."""
    if default_model_ships():
        return "default"
    out = workdir / "model"
    if not (out / WEIGHTS_FILE).exists():
        log.warning("no default model shipped; training a tiny demo model in %s", out)
        data = LabeledData(synthetic_tweets(1500, seed=1, prefix="train"), [])
        train(data, out, TrainConfig(preset="tiny", epochs=3, lr=3e-3, vocab_size=300, batch_size=32),
              command="span-jobs demo")
    return str(out)
