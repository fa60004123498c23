"""Scoring predictions against labeled tweets."""

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .data import SENTIMENTS, LabeledTweet
from .metric import jaccard

if TYPE_CHECKING:  # extract imports torch; scoring alone needs none of it
    from .extract import Extractor


def score_predictions(tweets: Sequence[LabeledTweet], results: Sequence) -> dict:
    """Jaccard overall and per true sentiment; sentiment accuracy where the model tagged it."""
    if len(tweets) != len(results):
        raise ValueError("tweets and results differ in length")
    scores = [jaccard(r.span, t.selected_text) for t, r in zip(tweets, results)]
    figures: dict = {"jaccard": sum(scores) / len(scores) if scores else 0.0, "n": len(scores), "per_sentiment": {}}
    for s in SENTIMENTS:
        group = [score for score, t in zip(scores, tweets) if t.sentiment == s]
        if group:
            figures["per_sentiment"][s] = {"jaccard": sum(group) / len(group), "n": len(group)}
    tagged = [(t, r) for t, r in zip(tweets, results) if not r.sentiment_given]
    if tagged:
        figures["sentiment_accuracy"] = sum(t.sentiment == r.sentiment for t, r in tagged) / len(tagged)
    return figures


def evaluate_model(extractor: "Extractor", tweets: Sequence[LabeledTweet], predict_sentiment: bool = False) -> dict:
    """Jaccard with the true sentiment given; with predict_sentiment, the model tags it first (end to end)."""
    texts = [t.text for t in tweets]
    figures = score_predictions(tweets, extractor.extract(texts, [t.sentiment for t in tweets]))
    figures["model_version"] = extractor.version
    if predict_sentiment:
        end_to_end = score_predictions(tweets, extractor.extract(texts, None))
        figures["sentiment_accuracy"] = end_to_end.get("sentiment_accuracy")  # None for no tweets
        figures["predicted_sentiment"] = {k: end_to_end[k] for k in ("jaccard", "per_sentiment")}
    return figures
