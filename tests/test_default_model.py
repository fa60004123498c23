"""The shipped default model: in the package, small, safetensors only, self-describing, on target.

The figures are the issues' targets, re-checked on every run on the shared data (skipped without it on
a developer machine, failed in CI):
a change to extraction or decoding that costs the default model quality fails here.
"""

import json
import os
import subprocess
import sys

import pandas as pd
from click.testing import CliRunner

from span_jobs.calibration import CONFIG_KEYS
from span_jobs.cli import cli
from span_jobs.data import read_labeled, read_raw
from span_jobs.model import DEFAULT_MODEL_DIR, METADATA_FILE, WEIGHTS_FILE
from span_jobs.registry import load_model


def test_default_model_ships_as_safetensors_within_40_mb():
    names = {p.name for p in DEFAULT_MODEL_DIR.iterdir()}
    assert {WEIGHTS_FILE, "config.json", "spiece.model", METADATA_FILE} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    assert (DEFAULT_MODEL_DIR / WEIGHTS_FILE).stat().st_size <= 40 * 10**6
    loaded = load_model("default")
    assert loaded.model.config.span_pointer == "word"
    assert sum(p.numel() for p in loaded.model.parameters()) < 20_000_000


def test_default_model_records_how_it_was_trained():
    metadata = json.loads((DEFAULT_MODEL_DIR / METADATA_FILE).read_text())
    command = metadata["training"]["command"]
    # the recipe by name, from the shared data, into a directory of the user's: nothing temporary to name
    assert command.startswith("span-jobs") and "--recipe default" in command and "--teacher-cache" not in command
    assert "--data ../shared/data/tweets/labeled.csv" in command and "/tmp" not in command
    assert metadata["training"]["teacher_from_cache"] is False
    assert len(metadata["data_digest"]) == 64
    validation = metadata["validation"]
    assert set(validation["per_sentiment"]) == {"negative", "neutral", "positive"}
    assert validation["validation_percent"] == 10 and validation["jaccard"] >= 0.66


def test_the_default_recipe_is_how_the_default_model_was_trained():
    """`span-jobs train --recipe default` and `retrain --recipe default` train as the shipped model was."""
    from span_jobs.train import RECIPES, TrainConfig

    config = json.loads((DEFAULT_MODEL_DIR / METADATA_FILE).read_text())["training"]["config"]
    recipe = RECIPES["default"]
    # a setting added to TrainConfig after the model was trained had its default then
    assert {k: config.get(k, getattr(TrainConfig(), k)) for k in recipe} == recipe
    assert TrainConfig.from_recipe("default", epochs=1, lr=None).epochs == 1  # None: not set, the recipe's stays
    assert TrainConfig.from_recipe("default", lr=None).epochs == RECIPES["default"]["epochs"]
    assert TrainConfig.from_recipe(None) == TrainConfig()


def test_default_model_was_trained_on_the_shared_labeled_file(real_labeled):
    metadata = json.loads((DEFAULT_MODEL_DIR / METADATA_FILE).read_text())
    assert metadata["data_digest"] == read_labeled(real_labeled).digest()


def test_default_model_meets_its_targets_on_the_report_part(real_labeled, two_threads):
    """`span-jobs evaluate --model default --split validation-report --predict-sentiment`: tweets it never
    trained on, and where nothing was fitted. With the sentiment given, and end to end as users of raw
    tweets get it: the sentiment tagged by the model, the span chosen under its calibrated
    uncertainty (issue #11)."""
    config = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    assert set(CONFIG_KEYS) <= set(config)

    def evaluate(model, *extra):
        result = CliRunner().invoke(cli, ["evaluate", "--model", model, "--data", str(real_labeled), "--split",
                                          "validation-report", "--json", "--device", "cpu", *extra])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    model, baseline = evaluate("default", "--predict-sentiment"), evaluate("full-text-baseline")
    assert model["split"] == "validation-report" and model["n"] == baseline["n"] > 1000
    assert model["jaccard"] >= 0.68 > baseline["jaccard"]  # the sentiment given: issue #12's floor
    for sentiment in ("negative", "positive"):
        assert model["per_sentiment"][sentiment]["jaccard"] > baseline["per_sentiment"][sentiment]["jaccard"] + 0.08
    assert model["per_sentiment"]["neutral"]["jaccard"] > 0.95
    end_to_end = model["predicted_sentiment"]["jaccard"]
    assert end_to_end >= 0.63 and end_to_end >= baseline["jaccard"] + 0.03  # issue #12's floor


def test_default_model_tags_the_sentiment_of_unlabeled_tweets_with_at_least_76_percent_accuracy(real_unlabeled,
                                                                                               two_threads, tmp_path):
    """`span-jobs predict` on the unlabeled file with its sentiment column taken out, as raw tweets arrive:
    the tagged sentiment against the one the file carries (issue #12's floor)."""
    rows = read_raw(real_unlabeled).to_pandas()
    rows = rows[rows["text"].str.strip() != ""]
    raw_tweets, predicted = tmp_path / "raw.parquet", tmp_path / "predicted.parquet"
    rows.drop(columns="sentiment").to_parquet(raw_tweets, index=False)
    result = CliRunner().invoke(cli, ["predict", "--input", str(raw_tweets), "--output", str(predicted),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    tagged = pd.read_parquet(predicted)
    assert list(tagged["textID"]) == list(rows["textID"]) and not tagged["is_sentiment_given"].any()
    accuracy = (tagged["sentiment"].to_numpy() == rows["sentiment"].to_numpy()).mean()
    assert len(rows) > 3000 and accuracy >= 0.76


def test_without_the_shared_data_ci_fails_instead_of_skipping(tmp_path):
    """A quality gate that skips is no gate: with CI set, a missing ../shared fails the run."""
    test = f"{__file__}::test_default_model_was_trained_on_the_shared_labeled_file"
    env = {**os.environ, "SPAN_JOBS_TEST_LABELED": str(tmp_path / "absent.csv")}
    for ci, expected_rc, word in (("true", 1, "error"), ("", 0, "skipped")):  # error: the fixture fails
        env["CI"] = ci
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == expected_rc, run.stdout
        assert f"1 {word}" in run.stdout and "shared data not present" in run.stdout
