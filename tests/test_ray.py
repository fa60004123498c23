"""The model stage on a Ray actor pool (a local Ray with CPU actors): the same spans as in process,
the model loaded once per actor, and through the one extract driver the same stored rows."""

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from span_jobs.extract import SpanExtractor
from span_jobs.model import load_model_dir
from span_jobs.pipeline import run_extract

import ray  # noqa: E402  (the ray extra; dev installs it, so CI never skips this)


@pytest.fixture(scope="module")
def ray_extractor(tiny_model_dir):
    from span_jobs.ray_stage import RayExtractor

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False)
    try:
        # fp32 on both sides: exact whatever the blocks (bf16 agrees to rounding only)
        yield RayExtractor(str(tiny_model_dir), actors=2, batch_size=16, device="cpu", precision="float32")
    finally:
        ray.shutdown()


TEXTS = [f"tweet {i}: what a {'great' if i % 3 else 'awful'} day it was" for i in range(50)]
SENTIMENTS = [("positive", "negative", None, "neutral")[i % 4] for i in range(50)]


@pytest.mark.slow  # make test-slow; CI runs it (.ci/run)
def test_ray_actors_give_the_in_process_spans(ray_extractor, tiny_model_dir):
    in_process = SpanExtractor(load_model_dir(tiny_model_dir), device="cpu", precision="float32").extract(TEXTS,
                                                                                                       SENTIMENTS)
    on_ray = ray_extractor.extract(TEXTS, SENTIMENTS)
    assert [(r.span, r.start, r.end, r.sentiment, r.sentiment_given) for r in on_ray] == \
        [(r.span, r.start, r.end, r.sentiment, r.sentiment_given) for r in in_process]
    for a, b in zip(on_ray, in_process):
        assert a.span_confidence == pytest.approx(b.span_confidence, abs=1e-6)
        assert (a.sentiment_prob is None) == (b.sentiment_prob is None)
    assert ray_extractor.version == load_model_dir(tiny_model_dir).version


@pytest.mark.slow  # make test-slow; CI runs it (.ci/run)
def test_each_actor_keeps_its_model_across_calls(ray_extractor):
    before = ray_extractor.actor_identities()
    for _ in range(3):  # the pipeline calls extract once per batch of a file
        ray_extractor.extract(TEXTS, SENTIMENTS)
    after = ray_extractor.actor_identities()
    assert len(after) == 2
    assert [pid for pid, _ in after] == [pid for pid, _ in before]  # the same processes, models still loaded
    assert sum(done for _, done in after) - sum(done for _, done in before) == 3 * 4  # 50 tweets: 4 blocks of 16


@pytest.mark.slow  # make test-slow; CI runs it (.ci/run)
def test_the_pipeline_stores_the_same_rows_through_ray(ray_extractor, tiny_model_dir, tmp_path):
    stored = {}
    for name, extractor in (("ray", ray_extractor), ("local", SpanExtractor(load_model_dir(tiny_model_dir),
                                                                            device="cpu", precision="float32"))):
        inbox, db = tmp_path / name / "inbox", tmp_path / name / "spans.duckdb"
        inbox.mkdir(parents=True)
        pq.write_table(pa.table({"id": [f"t{i}" for i in range(50)], "text": TEXTS, "sentiment": SENTIMENTS}),
                       inbox / "a.parquet")
        assert run_extract(inbox, db, extractor).rows_stored == 50
        with duckdb.connect(str(db), read_only=True) as con:
            stored[name] = con.execute("select tweet_id, sentiment, span, span_start, span_end, model_version "
                                       "from spans order by tweet_id").fetchall()
    assert stored["ray"] == stored["local"]
