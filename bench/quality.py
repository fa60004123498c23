"""Quality of a model, reproducibly: trains nothing, evaluates, prints the figures the issues ask for.

On one part of a labeled file's fixed validation split (default: the report half, where nothing
was chosen or fitted; data.split_validation_parts), tweets the model never trained on:
  - word-level Jaccard with the sentiment given, overall and per sentiment, beside two baselines:
    the full tweet, and the lexicon rule (the strongest VADER word of the tweet's sign);
  - end-to-end Jaccard when the model tags the sentiment itself (what users of raw tweets get),
    beside the plain threshold rule (whole tweet when P(neutral) > 0.15, else the likelier
    polarity's span) that the decision under uncertainty must beat;
  - calibration: sentiment ECE before and after, mean span_confidence against the mean Jaccard;
  - the teachers' figures on the same tweets, as measured when the model was trained (distilled models);
  - sentiment accuracy on those tweets and on the unlabeled file (it carries the true sentiment);
  - CPU inference speed of SpanExtractor on those tweets.

    python bench/quality.py [--model default] [--labeled FILE] [--unlabeled FILE] [--split validation-report]
"""

import argparse
import json
import re
import time
from pathlib import Path

import torch

from span_jobs.calibration import calibration_figures
from span_jobs.data import LabeledTweet, read_labeled, read_raw, select_split
from span_jobs.evaluate import evaluate_model, score_predictions
from span_jobs.extract import FullTextExtractor, SpanExtractor, SpanResult
from span_jobs.lexicon import valence
from span_jobs.registry import load_model

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


def threshold_rule(extractor: SpanExtractor, tweets: list[LabeledTweet], threshold: float = 0.15) -> list[SpanResult]:
    """The floor for the end-to-end decision: the whole tweet when P(neutral) > threshold, else the
    span under the likelier polarity (0.613 on held-out tweets with the old default model)."""
    words = [extractor.codec.words(t.text) for t in tweets]
    p = extractor.sentiment_distribution(words)
    labels = ["negative" if row[0] > row[2] else "positive" for row in p.tolist()]
    results = extractor.extract([t.text for t in tweets], labels)
    whole = FullTextExtractor().extract([t.text for t in tweets], labels)
    return [w if row[1] > threshold else r for w, r, row in zip(whole, results, p.tolist())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--labeled", type=Path, default=SHARED / "labeled.csv")
    parser.add_argument("--unlabeled", type=Path, default=SHARED / "unlabeled.csv")
    parser.add_argument("--split", default="validation-report",
                        choices=["validation-report", "validation-choice", "validation", "all"],
                        help="settings are fitted on validation-choice: quote validation-report")
    parser.add_argument("--json", action="store_true", help="also print all figures as one JSON object")
    args = parser.parse_args()

    loaded = load_model(args.model)
    extractor = SpanExtractor(loaded, device="cpu")
    tweets = select_split(read_labeled(args.labeled).tweets, args.split)
    print(f"model {loaded.version} ({args.model}); {len(tweets)} tweets: {args.labeled} ({args.split}); "
          f"{torch.get_num_threads()} CPU threads; decoding {extractor.decoding}, "
          f"{extractor.span_candidates} first x {extractor.last_candidates} last words; spans placed as the "
          f"labels place them (label shift): {'yes' if extractor.span_label_shift else 'no'}")

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
    teacher = loaded.metadata.training.get(f"teacher_{args.split.removeprefix('validation-')}_part")
    if teacher:  # measured when the model was trained (the teachers are not kept), on these same tweets
        print(f"  teacher (at training): jaccard {teacher['jaccard']:.4f}, sentiment accuracy "
              + ", ".join(f"{k.removesuffix('_sentiment_accuracy')} {v:.4f}" for k, v in teacher.items()
                          if k.endswith("sentiment_accuracy")))
    floor = score_predictions(tweets, threshold_rule(extractor, tweets))
    print(f"jaccard, sentiment tagged by the model (end to end) {figures['predicted_sentiment']['jaccard']:.4f}   "
          f"(full text {baseline['jaccard']:.4f}, threshold rule P(neutral) > 0.15 {floor['jaccard']:.4f})")
    for s, group in figures["predicted_sentiment"]["per_sentiment"].items():
        print(f"  {s:<9} {group['jaccard']:.4f}")
    print(f"sentiment accuracy ({args.split} tweets) {figures['sentiment_accuracy']:.4f}")
    calibration = calibration_figures(extractor, tweets)
    print(f"calibration: sentiment ECE {calibration['sentiment_ece_before']:.4f} raw -> "
          f"{calibration['sentiment_ece_after']:.4f} calibrated; mean span_confidence "
          f"{calibration['mean_span_confidence']:.4f} vs mean jaccard {calibration['mean_jaccard']:.4f} (end to end)")

    result = {"model_version": loaded.version, "split": args.split, "figures": figures, "baseline": baseline,
              "lexicon_rule": rule, "threshold_rule": floor, "calibration": calibration, "teacher": teacher}
    if args.unlabeled.exists():
        raw = read_raw(args.unlabeled).to_pandas()
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
