"""The model stage on Ray Data, for many GPUs per node: an optional extra (pip install -e ".[ray]").

RayExtractor is an Extractor like SpanExtractor, so the pipeline, its claims and its ledger stay
as they are; only `extract` changes: each batch of tweets becomes a Ray dataset that
`map_batches` sends through a pool of actors, each loading the model once and holding one GPU
(``gpus_per_actor=1``) or CPU threads. The model is resolved to one directory when the
extractor is made, so every actor of a run serves the same model version.
"""

import os
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from .extract import SpanResult, make_extractor
from .model import ModelMetadata
from .registry import FULL_TEXT_BASELINE, resolve_model_dir

RESULT_SCHEMA = pa.schema([("row", pa.int64()), ("span", pa.string()), ("start", pa.int64()), ("end", pa.int64()),
                           ("sentiment", pa.string()), ("sentiment_prob", pa.float64()),
                           ("sentiment_given", pa.bool_()), ("span_confidence", pa.float64())])
RESULT_COLUMNS = RESULT_SCHEMA.names[1:]  # SpanResult's fields, in its order


class ExtractBatches:
    """A Ray Data actor: the model loads once, in the constructor; each call extracts one batch."""

    def __init__(self, model: str, device: str, token_budget: int | None, decoding: str):
        self.extractor = make_extractor(model, device=device, token_budget=token_budget, decoding=decoding)

    def __call__(self, batch: pa.Table) -> pa.Table:
        results = self.extractor.extract(batch.column("text").to_pylist(), batch.column("sentiment").to_pylist())
        columns = [batch.column("row")] + [[getattr(r, name) for r in results] for name in RESULT_COLUMNS]
        return pa.table(columns, schema=RESULT_SCHEMA)  # typed: a block of given sentiments has no probabilities


class RayExtractor:
    """Spans from a Ray Data actor pool: ``actors`` copies of the model, ``gpus_per_actor`` GPUs each.

    ``address`` (or RAY_ADDRESS) joins a running Ray cluster; without one a local Ray starts.
    """

    def __init__(self, model: str, registry: str | Path | None = None, actors: int = 1, gpus_per_actor: float = 0,
                 batch_size: int = 1024, device: str = "auto", token_budget: int | None = None,
                 decoding: str = "expected-jaccard", address: str | None = None):
        import ray

        if model == FULL_TEXT_BASELINE:
            self.model, self.version = model, model
        else:
            directory = resolve_model_dir(model, registry)  # once: 'promoted' cannot change under a run
            self.model, self.version = str(directory), ModelMetadata.read(directory).version
        self.actors, self.gpus_per_actor, self.batch_size = actors, gpus_per_actor, batch_size
        self.options = {"model": self.model, "device": device if gpus_per_actor else "cpu",
                        "token_budget": token_budget, "decoding": decoding}
        if not ray.is_initialized():
            ray.init(address=address or os.environ.get("RAY_ADDRESS"), include_dashboard=False,
                     log_to_driver=False, configure_logging=False)

    def extract(self, texts: Sequence[str], sentiments: Sequence[str | None] | None = None) -> list[SpanResult]:
        import ray.data

        texts = list(texts)
        sentiments = list(sentiments) if sentiments is not None else [None] * len(texts)
        if not texts:
            return []
        table = pa.table({"row": pa.array(range(len(texts)), pa.int64()), "text": pa.array(texts, pa.string()),
                          "sentiment": pa.array(sentiments, pa.string())})
        blocks = [table.slice(i, self.batch_size) for i in range(0, len(texts), self.batch_size)]  # one per batch
        results = ray.data.from_arrow(blocks).map_batches(
            ExtractBatches, fn_constructor_kwargs=self.options, compute=ray.data.ActorPoolStrategy(size=self.actors),
            num_gpus=self.gpus_per_actor, batch_size=self.batch_size, batch_format="pyarrow",
        ).to_arrow_refs()
        out = pa.concat_tables(ray.get(results)).sort_by("row")  # actors finish in any order
        columns = [out.column(name).to_pylist() for name in RESULT_COLUMNS]
        return [SpanResult(*values) for values in zip(*columns)]
