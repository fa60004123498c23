"""Quality of a model, reproducibly: trains nothing, evaluates, prints the figures issue #4 asks for.

  - word-level Jaccard with the sentiment given, overall and per sentiment, on the fixed validation
    split of a labeled file (tweets the model never trained on), beside two baselines: the full
    tweet, and the lexicon rule (the strongest VADER word of the tweet's sign, else the full tweet);
  - end-to-end Jaccard when the model tags the sentiment itself, on the same tweets;
  - sentiment accuracy on the unlabeled file (it carries the true sentiment);
  - CPU inference speed of SpanExtractor on those tweets.

    python bench/quality.py [--model default] [--labeled FILE] [--unlabeled FILE] [--split validation]
"""

import argparse
import json
import re
import time
from pathlib import Path

import torch

from span_jobs.data import LabeledTweet, read_labeled, read_raw, split_train_validation
from span_jobs.evaluate import evaluate_model, score_predictions
from span_jobs.extract import FullTextExtractor, SpanExtractor, SpanResult
from span_jobs.lexicon import valence
from span_jobs.model import load_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tweets"


def lexicon_rule(tweets: list[LabeledTweet]) -> list[SpanResult]:
    """A model must also beat this: for a positive (negative) tweet the word with the highest (lowest)
    VADER valence, if any is rated with that sign; the whole tweet otherwise and for neutral ones."""
    results = FullTextExtractor().extract([t.text for t in tweets], [t.sentiment for t in tweets])
    for i, t in enumerate(tweets):
        sign = {"positive": 1, "negative": -1}.get(t.sentiment, 0)
        units = list(re.finditer(r"\S+", t.text))
        scores = [sign * valence(u.group()) for u in units]
        if sign and scores and max(scores) > 0:
            best = units[scores.index(max(scores))]
            results[i] = SpanResult(best.group(), best.start(), best.end(), t.sentiment, None, True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--labeled", type=Path, default=SHARED / "labeled.csv")
    parser.add_argument("--unlabeled", type=Path, default=SHARED / "unlabeled.csv")
    parser.add_argument("--split", choices=["validation", "all"], default="validation")
    parser.add_argument("--json", action="store_true", help="also print all figures as one JSON object")
    args = parser.parse_args()

    loaded = load_model(args.model)
    extractor = SpanExtractor(loaded, device="cpu")
    tweets = read_labeled(args.labeled).tweets
    if args.split == "validation":
        tweets = split_train_validation(tweets)[1]
    print(f"model {loaded.version} ({args.model}); {len(tweets)} tweets: {args.labeled} ({args.split}); "
          f"{torch.get_num_threads()} CPU threads; decoding {extractor.decoding}, "
          f"{extractor.span_candidates} first x {extractor.last_candidates} last words")

    started = time.perf_counter()
    figures = evaluate_model(extractor, tweets, predict_sentiment=True)
    seconds = time.perf_counter() - started  # two passes: sentiment given, then tagged + extracted
    baseline = evaluate_model(FullTextExtractor(), tweets)
    rule = score_predictions(tweets, lexicon_rule(tweets))
    print(f"\njaccard, sentiment given   {figures['jaccard']:.4f}   (full text {baseline['jaccard']:.4f}, "
          f"lexicon rule {rule['jaccard']:.4f})")
    for s, group in figures["per_sentiment"].items():
        print(f"  {s:<9} {group['jaccard']:.4f}   (full text {baseline['per_sentiment'][s]['jaccard']:.4f}, "
              f"lexicon rule {rule['per_sentiment'][s]['jaccard']:.4f}, n={group['n']})")
    print(f"jaccard, sentiment predicted {figures['predicted_sentiment']['jaccard']:.4f}")
    print(f"sentiment accuracy (validation tweets) {figures['sentiment_accuracy']:.4f}")

    result = {"model_version": loaded.version, "validation": figures, "baseline": baseline, "lexicon_rule": rule}
    if args.unlabeled.exists():
        raw = read_raw(args.unlabeled)
        rows = raw[raw["text"].str.strip() != ""]
        unlabeled = [LabeledTweet(str(i), t, t, s) for i, t, s in zip(rows.index, rows["text"], rows["sentiment"])]
        started_tag = time.perf_counter()
        tagged = score_predictions(unlabeled, extractor.extract([t.text for t in unlabeled], None))
        tag_seconds = time.perf_counter() - started_tag
        print(f"sentiment accuracy ({args.unlabeled.name}, n={len(unlabeled)}) {tagged['sentiment_accuracy']:.4f}")
        result["unlabeled_sentiment_accuracy"] = tagged["sentiment_accuracy"]
        result["unlabeled_tweets_per_second_tag_and_extract"] = len(unlabeled) / tag_seconds
    speed = 2 * len(tweets) / seconds
    print(f"\nCPU speed: {speed:.0f} tweets/s (SpanExtractor, sentiment given and tagged passes averaged)")
    result["tweets_per_second"] = speed
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
