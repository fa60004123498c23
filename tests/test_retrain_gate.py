"""The retrain gate under concurrency and kills: the decision is taken against the champion in
place at the moment of promotion, a promotion is never left unrecorded, and an event-triggered
retrain trains and gates on all the labeled data. Real tiny models, a real registry and DuckDB file."""

import json
import subprocess
import sys
import textwrap

import duckdb
import pandas as pd
import pytest

import span_jobs.retrain
from span_jobs.model import load_model_dir, save_model
from span_jobs.registry import Registry
from span_jobs.retrain import retrain, sync_promotions
from span_jobs.synthetic import synthetic_tweets
from span_jobs.data import read_labeled
from span_jobs.train import TrainConfig, training_split

QUICK = TrainConfig(preset="tiny", epochs=3, lr=3e-3, device="cpu")


def write_labeled(path, n, seed, prefix):
    rows = synthetic_tweets(n, seed=seed, prefix=prefix)
    pd.DataFrame([{"textID": t.tweet_id, "text": t.text, "selected_text": t.selected_text, "sentiment": t.sentiment}
                  for t in rows]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    return write_labeled(tmp_path_factory.mktemp("labeled") / "labeled.csv", 900, seed=3, prefix="lab")


@pytest.fixture
def weak_champion(tmp_path, tiny_model_dir):
    """A registry whose champion is an untrained tiny model: any trained challenger beats it."""
    registry = Registry(tmp_path / "registry")
    weak = load_model_dir(tiny_model_dir)
    save_model(weak, registry.new_model_dir(weak.version))
    registry.promote(weak.version, 0.0)
    return registry, weak.version


def test_a_champion_promoted_while_the_run_trained_is_the_one_it_must_beat(tmp_path, labeled, weak_champion,
                                                                          monkeypatch):
    registry, weak_version = weak_champion
    train = span_jobs.retrain.train

    def train_while_another_retrain_promotes(data, out_dir, config, command=""):
        result = train(data, out_dir, config, command)
        rival = load_model_dir(out_dir)  # another retrain finished first, with a model just as good
        rival.metadata.version = "rival"
        save_model(rival, registry.new_model_dir("rival"))
        registry.promote("rival", 0.0)
        return result

    monkeypatch.setattr(span_jobs.retrain, "train", train_while_another_retrain_promotes)
    db = tmp_path / "spans.duckdb"
    outcome = retrain(labeled, QUICK, registry_root=registry.root, database=db)
    # against the untrained champion it saw when it started, it would have been promoted
    assert outcome.champion_version == "rival"
    assert outcome.champion_jaccard == pytest.approx(outcome.challenger_jaccard)
    assert not outcome.is_promoted and "<= champion" in outcome.reason
    assert registry.champion()["version"] == "rival"
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("select champion_version, is_promoted from training_runs").fetchall() == [("rival", False)]


def test_a_promotion_records_both_figures_and_its_run_with_the_switch(tmp_path, labeled, weak_champion):
    registry, weak_version = weak_champion
    db = tmp_path / "spans.duckdb"
    outcome = retrain(labeled, QUICK, registry_root=registry.root, database=db)
    assert outcome.is_promoted, outcome.reason
    record = registry.champion()
    assert record["training_run"]["run_id"] == outcome.run_id  # the run travels with the pointer
    assert record["end_to_end_jaccard"] == pytest.approx(outcome.challenger_end_to_end_jaccard)
    with duckdb.connect(str(db), read_only=True) as con:
        history = con.execute("select challenger_jaccard, challenger_end_to_end_jaccard, challenger_sentiment_accuracy, "
                              "champion_end_to_end_jaccard, is_promoted from model_history").fetchall()
        registered = con.execute("select model_version, end_to_end_jaccard from model_registry").fetchall()
    assert len(history) == 1 and all(v is not None for v in history[0])
    assert history[0][-1] is True
    # the fixture's promotion (made without a database) is recorded too: every promotion is
    assert registered == [(weak_version, None),
                          (outcome.challenger_version, pytest.approx(outcome.challenger_end_to_end_jaccard))]


def test_a_kill_right_after_the_switch_loses_no_record(tmp_path, tiny_model_dir):
    registry = Registry(tmp_path / "registry")
    save_model(load_model_dir(tiny_model_dir), registry.new_model_dir("m-new"))
    run = {"run_id": "retrain-killed", "reason": "challenger better", "is_promoted": True, "n_train": 10,
           "n_validation": 2, "data_digest": "d", "baseline_jaccard": 0.5, "started_at": "2026-12-01T00:00:00+00:00"}
    script = textwrap.dedent(f"""
        import os, signal
        import span_jobs.registry as registry
        fsync = registry._fsync_dir
        def fsync_then_die(directory):  # the pointer is switched and durable; nothing after it happens
            fsync(directory)
            os.kill(os.getpid(), signal.SIGKILL)
        registry._fsync_dir = fsync_then_die
        registry.Registry({str(registry.root)!r}).promote("m-new", 0.7, {{"training_run": {run!r}}})
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert registry.champion()["version"] == "m-new"
    assert not registry.log.exists()  # the kill came before the log line
    db = tmp_path / "spans.duckdb"
    assert sync_promotions(db, registry) == 1  # what the next retrain does first
    assert sync_promotions(db, registry) == 0  # and only once
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("select model_version, validation_jaccard, training_run_id from model_registry").fetchall() \
            == [("m-new", 0.7, "retrain-killed")]
        assert con.execute("select run_id, is_promoted from training_runs").fetchall() == [("retrain-killed", True)]
    registry.promote("m-new", 0.8)  # the next promotion first logs the one the kill kept out of the log
    assert [json.loads(line)["validation_jaccard"] for line in registry.log.read_text().splitlines()] == [0.7, 0.8]


def test_new_labeled_data_is_trained_on_with_all_the_known_data(tmp_path, labeled, weak_champion):
    registry, _ = weak_champion
    known = tmp_path / "labeled"
    known.mkdir()
    (known / "first.csv").write_bytes(labeled.read_bytes())
    new = write_labeled(known / "new.csv", 30, seed=9, prefix="new")  # arrives in the labeled directory
    outcome = retrain([known, new], QUICK, registry_root=registry.root)
    assert outcome.n_train + outcome.n_validation == 930  # the new file once, beside the 900 known rows
    _, alone = training_split(read_labeled(new).tweets, QUICK)
    assert len(alone) < 10 < outcome.n_validation  # the new file alone: what the event used to gate on
