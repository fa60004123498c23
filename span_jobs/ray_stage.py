"""The model stage on a Ray actor pool, for many GPUs per node: an optional extra (pip install -e ".[ray]").

RayExtractor is an Extractor like SpanExtractor, so the pipeline, its claims and its ledger stay
as they are; only `extract` changes: the tweets go in blocks to a pool of long-lived actors, each
holding one model (and one GPU with ``gpus_per_actor=1``, or CPU threads), loaded once when the
extractor is made and kept for every batch of every file. (A Ray Data ``map_batches`` pipeline
starts a new actor pool for each dataset, so it would load the model again for every batch the
pipeline hands over.) The model is resolved to one directory when the extractor is made, so
every actor of a run serves the same model version.
"""

import os
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from .extract import SpanResult, make_extractor
from .model import ModelMetadata
from .registry import FULL_TEXT_BASELINE, resolve_model_dir

RESULT_SCHEMA = pa.schema([("span", pa.string()), ("start", pa.int64()), ("end", pa.int64()),
                           ("sentiment", pa.string()), ("sentiment_prob", pa.float64()),
                           ("sentiment_given", pa.bool_()), ("span_confidence", pa.float64())])
RESULT_COLUMNS = RESULT_SCHEMA.names  # SpanResult's fields, in its order


class ExtractBatches:
    """A Ray actor: the model loads once, in the constructor; each call extracts one block."""

    def __init__(self, model: str, device: str, token_budget: int | None, decoding: str, precision: str):
        self.extractor = make_extractor(model, device=device, token_budget=token_budget, decoding=decoding,
                                        precision=precision)
        self.blocks_done = 0

    def extract(self, block: pa.Table) -> pa.Table:
        results = self.extractor.extract(block.column("text").to_pylist(), block.column("sentiment").to_pylist())
        self.blocks_done += 1
        columns = [[getattr(r, name) for r in results] for name in RESULT_COLUMNS]
        return pa.table(columns, schema=RESULT_SCHEMA)  # typed: a block of given sentiments has no probabilities

    def identity(self) -> tuple[int, int]:
        """(process id, blocks done): the same process across calls means the model stayed loaded."""
        return os.getpid(), self.blocks_done


class RayExtractor:
    """Spans from a pool of ``actors`` Ray actors, ``gpus_per_actor`` GPUs each, made once.

    ``address`` (or RAY_ADDRESS) joins a running Ray cluster; without one a local Ray starts.
    """

    def __init__(self, model: str, registry: str | Path | None = None, actors: int = 1, gpus_per_actor: float = 0,
                 batch_size: int = 1024, device: str = "auto", token_budget: int | None = None,
                 decoding: str = "expected-jaccard", address: str | None = None, precision: str = "auto"):
        import ray

        if model == FULL_TEXT_BASELINE:
            self.model, self.version = model, model
        else:
            directory = resolve_model_dir(model, registry)  # once: 'promoted' cannot change under a run
            self.model, self.version = str(directory), ModelMetadata.read(directory).version
        self.batch_size = batch_size
        if not ray.is_initialized():
            ray.init(address=address or os.environ.get("RAY_ADDRESS"), include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        actor_class = ray.remote(num_gpus=gpus_per_actor)(ExtractBatches)
        self.actors = [actor_class.remote(self.model, device if gpus_per_actor else "cpu", token_budget, decoding,
                                          precision) for _ in range(actors)]

    def extract(self, texts: Sequence[str], sentiments: Sequence[str | None] | None = None) -> list[SpanResult]:
        from ray.util import ActorPool

        texts = list(texts)
        sentiments = list(sentiments) if sentiments is not None else [None] * len(texts)
        if not texts:
            return []
        table = pa.table({"text": pa.array(texts, pa.string()), "sentiment": pa.array(sentiments, pa.string())})
        blocks = [table.slice(i, self.batch_size) for i in range(0, len(texts), self.batch_size)]
        # map() hands each idle actor the next block and gives the results back in block order
        done = ActorPool(self.actors).map(lambda actor, block: actor.extract.remote(block), blocks)
        out = pa.concat_tables(list(done))
        columns = [out.column(name).to_pylist() for name in RESULT_COLUMNS]
        return [SpanResult(*values) for values in zip(*columns)]

    def actor_identities(self) -> list[tuple[int, int]]:
        import ray

        return ray.get([actor.identity.remote() for actor in self.actors])
