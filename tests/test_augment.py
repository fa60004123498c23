"""The transfer set: augmented copies keep the gold span, and a distilled run trains on every copy."""

import json

from click.testing import CliRunner

from flows.cli import cli
from span_jobs.augment import augmented_tweets
from span_jobs.data import LabeledTweet, read_labeled
from span_jobs.model import METADATA_FILE
from span_jobs.words import locate_selection, split_words

TWEETS = [
    LabeledTweet("a", "well today i am so happy about the new job and the weather", "so happy", "positive"),
    LabeledTweet("b", "ugh  this   stupid bus is late again and again", "stupid bus", "negative"),
    LabeledTweet("c", "going to the shop later for some milk", "going to the shop later for some milk", "neutral"),
    LabeledTweet("d", "sad", "sad", "negative"),  # nothing outside the span to drop
    LabeledTweet("e", "i really love it when it rains all day long", "ove it", "positive"),  # cuts a word
]


def span_words(tweet: LabeledTweet) -> list[str]:
    words = split_words(tweet.text, 100)
    first, last = locate_selection(words, tweet.selected_text)
    return [words.unit(i) for i in range(first, last + 1)]


def test_copies_keep_the_gold_span_and_drop_only_words_around_it():
    copies = augmented_tweets(TWEETS, copies=3, drop=0.5, max_words=100, seed=0)
    originals = {t.tweet_id: t for t in TWEETS}
    assert copies and {c.tweet_id.split("~")[0] for c in copies} <= {"a", "b", "e"}  # polar, with words to drop
    for copy in copies:
        original = originals[copy.tweet_id.split("~")[0]]
        assert copy.selected_text == original.selected_text and copy.sentiment == original.sentiment
        assert span_words(copy) == span_words(original)
        assert len(split_words(copy.text, 100)) < len(split_words(original.text, 100))
        kept, words = split_words(copy.text, 100), split_words(original.text, 100)
        remaining = [words.unit(i) for i in range(len(words))]
        for i in range(len(kept)):  # the copy's words appear in the original's order
            assert kept.unit(i) in remaining
            remaining = remaining[remaining.index(kept.unit(i)) + 1:]
    assert len({c.tweet_id for c in copies}) == len(copies)


def test_copies_are_the_same_for_a_seed_and_differ_across_seeds():
    first = augmented_tweets(TWEETS, copies=2, drop=0.3, max_words=100, seed=1)
    assert first == augmented_tweets(TWEETS, copies=2, drop=0.3, max_words=100, seed=1)
    assert first != augmented_tweets(TWEETS, copies=2, drop=0.3, max_words=100, seed=2)
    assert augmented_tweets(TWEETS, copies=0, drop=0.3, max_words=100, seed=1) == []


def test_distilled_training_with_copies_trains_on_every_copy_of_its_split(tmp_path, labeled_csv, wordpiece_dir):
    out = tmp_path / "model"
    result = CliRunner().invoke(cli, [str(a) for a in (
        "train", "--data", labeled_csv, "--out", out, "--preset", "tiny", "--epochs", 1, "--limit", 80,
        "--vocab-size", 400, "--distill", "--teacher-dir", wordpiece_dir, "--augment-copies", 2, "--device", "cpu")])
    assert result.exit_code == 0, result.output
    training = json.loads((out / METADATA_FILE).read_text())["training"]
    assert training["config"]["augment_copies"] == 2
    # the copies of the run's own training tweets, every one (train.py has the teacher label the same list)
    from span_jobs.train import TrainConfig, training_split

    train_tweets, _ = training_split(read_labeled(labeled_csv).tweets, TrainConfig(limit=80))
    expected = augmented_tweets(train_tweets, copies=2, drop=TrainConfig.augment_drop, max_words=100, seed=0)
    assert training["augmented_tweets"] == len(expected) > 0
