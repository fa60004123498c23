"""The teacher cache: a later run with the same data and teacher settings reads the teachers' outputs
back and trains the same student; anything that would change those outputs misses."""

import json

import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from span_jobs.cli import cli
from span_jobs.data import LabeledTweet
from span_jobs.model import METADATA_FILE, WEIGHTS_FILE
from span_jobs.teacher import teacher_outputs

TWEETS = [LabeledTweet(f"t{i}", text, selected, sentiment) for i, (text, selected, sentiment) in enumerate([
    ("so happy today !", "happy", "positive"), ("i love the day", "love", "positive"),
    ("so sad .", "sad", "negative"), ("i hate work", "hate", "negative"), ("the day .", "the day .", "neutral")])]


def _outputs(cache, **settings):
    options = dict(epochs=1, seed=0, device="cpu", repair_labels=False, sentiment_teacher="classifier")
    return teacher_outputs(TWEETS, TWEETS, 8, cache_dir=cache, **{**options, **settings})


def test_cached_outputs_are_the_computed_ones_and_other_settings_miss(tmp_path, wordpiece_dir):
    computed, hit = _outputs(tmp_path, directory=wordpiece_dir)
    assert not hit
    [entry] = tmp_path.iterdir()
    assert entry.suffix == ".pt"  # written whole: no .partial left behind
    read, hit = _outputs(tmp_path, directory=wordpiece_dir)
    assert hit and set(read) == set(computed) == {t.tweet_id for t in TWEETS}
    for tweet_id, soft in computed.items():
        for name, value in vars(soft).items():
            assert torch.equal(getattr(read[tweet_id], name), value), name
    assert computed["t0"].joint_sentiment is not None  # the span teacher's own sentiment, kept for its figures
    for changed in (dict(seed=1), dict(sentiment_teacher="joint"), dict(repair_labels=True), dict(bf16=True)):
        assert not _outputs(tmp_path, directory=wordpiece_dir, **changed)[1], changed
    assert len(list(tmp_path.iterdir())) == 5


def test_a_run_from_the_cache_trains_the_same_student(tmp_path, labeled_csv, wordpiece_dir):
    def run(out):
        result = CliRunner().invoke(cli, [str(a) for a in (
            "train", "--data", labeled_csv, "--out", out, "--preset", "tiny", "--epochs", 1, "--limit", 80,
            "--vocab-size", 400, "--distill", "--teacher-dir", wordpiece_dir, "--teacher-cache", tmp_path / "cache",
            "--device", "cpu")])
        assert result.exit_code == 0, result.output
        return json.loads((out / METADATA_FILE).read_text())

    first, second = run(tmp_path / "first"), run(tmp_path / "second")
    assert (first["training"]["teacher_from_cache"], second["training"]["teacher_from_cache"]) == (False, True)
    assert first["training"]["teacher_choice_part"] == second["training"]["teacher_choice_part"]
    assert first["validation"] == second["validation"]
    weights = [load_file(tmp_path / name / WEIGHTS_FILE) for name in ("first", "second")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
