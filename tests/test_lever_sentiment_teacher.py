"""A separate MiniLM-style classifier as the sentiment teacher (a tiny BERT built here)."""

import json

import pytest
import torch

from span_jobs.data import SENTIMENTS, LabeledData, LabeledTweet
from span_jobs.errors import TrainingError
from span_jobs.model import ModelMetadata
from span_jobs.teacher import SentimentTeacher, soft_sentiments, train_sentiment_teacher
from span_jobs.train import TrainConfig, train

TWEETS = [LabeledTweet(f"t{i}", text, text, sentiment) for i, (text, sentiment) in enumerate([
    ("so happy !", "positive"), ("i love the day", "positive"), ("so sad .", "negative"),
    ("i hate work", "negative"), ("the day .", "neutral"), ("i work", "neutral")])]


def test_the_classifier_learns_the_labels_and_gives_a_distribution_per_tweet(wordpiece_dir):
    torch.manual_seed(0)  # the start train_sentiment_teacher(seed=0) takes
    untrained = SentimentTeacher.pretrained(8, wordpiece_dir).eval()
    classifier = train_sentiment_teacher(TWEETS, max_words=8, epochs=30, lr=3e-3, batch_size=6,
                                         directory=wordpiece_dir)
    assert not classifier.training
    outputs = soft_sentiments(classifier, TWEETS, batch_size=4)
    assert set(outputs) == {t.tweet_id for t in TWEETS}
    for t in TWEETS:
        probs, states = outputs[t.tweet_id]
        assert probs.shape == (3,)
        assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)
        # its state at each of the tweet's words, the states its label was read from
        assert states.shape == (len(t.text.split()), 24) and states.dtype == torch.float16
        assert (states.abs().sum(-1) > 0).all()

    def gold(outputs):
        return sum(outputs[t.tweet_id][0][SENTIMENTS.index(t.sentiment)].item() for t in TWEETS) / len(TWEETS)

    assert gold(outputs) > gold(soft_sentiments(untrained, TWEETS)) + 0.1


def test_a_tweets_classifier_output_does_not_depend_on_its_batch(wordpiece_dir):
    classifier = train_sentiment_teacher(TWEETS, max_words=8, epochs=1, batch_size=6, directory=wordpiece_dir)
    alone = soft_sentiments(classifier, TWEETS[:1])
    padded = soft_sentiments(classifier, TWEETS)
    assert torch.allclose(alone["t0"][0], padded["t0"][0], atol=1e-5)
    assert torch.allclose(alone["t0"][1].float(), padded["t0"][1].float(), atol=1e-2)  # float16


def test_an_unknown_sentiment_teacher_is_refused_before_training(tmp_path):
    with pytest.raises(TrainingError, match="sentiment_teacher"):
        train(LabeledData(TWEETS, []), tmp_path / "model", TrainConfig(distill=True, sentiment_teacher="lexicon"))


def test_a_distilled_run_with_the_classifier_reports_both_teachers_beside_the_student(tmp_path, wordpiece_dir,
                                                                                     trained_data):
    """A real (tiny) run: span teacher, classifier and student all train; the teachers' figures on the
    choice and the report part travel in the model's metadata."""
    config = TrainConfig(preset="tiny", vocab_size=400, epochs=1, distill=True, state_weight=0,
                         sentiment_teacher="classifier", teacher_dir=str(wordpiece_dir))
    result = train(trained_data, tmp_path / "model", config)
    training = ModelMetadata.read(result.directory).training
    for part in ("choice_part", "report_part"):
        figures = training[f"teacher_{part}"]
        assert set(figures) == {"jaccard", "joint_sentiment_accuracy", "classifier_sentiment_accuracy"}
        assert all(0 <= v <= 1 for v in figures.values())


def test_teacher_epochs_from_the_command_line_reach_the_run_and_its_record(tmp_path, train_tiny_cli, wordpiece_dir):
    from span_jobs.model import METADATA_FILE

    out = train_tiny_cli(tmp_path / "m", "--distill", "--teacher-dir", wordpiece_dir, "--teacher-epochs", 2)
    config = json.loads((out / METADATA_FILE).read_text())["training"]["config"]
    assert config["teacher_epochs"] == 2
