"""Augmented copies of training tweets: more text for the student to learn the teacher's spans on.

Issue 12's transfer set. A copy drops some of the words outside the gold span, so the gold span
(and so the gold label) still holds, while the words around it, their positions and the tweet's
length change; with distillation the teacher labels each copy afresh (train.py), so the student
learns from its soft spans on text the gold rows do not have. Neutral tweets are not copied:
their gold span is almost always the whole tweet, which a copy would keep whole.
"""

import random

from .data import LabeledTweet
from .words import locate_selection, split_words

AUGMENTED_SENTIMENTS = ("positive", "negative")


def augmented_tweets(tweets: list[LabeledTweet], copies: int, drop: float, max_words: int,
                     seed: int) -> list[LabeledTweet]:
    """Up to ``copies`` copies of each positive and negative tweet, each outside word dropped with
    probability ``drop``; a draw that drops nothing, or after which the selection no longer covers
    the same words, is not kept. Copy ids are ``<tweet id>~<k>``; the same seed gives the same copies.
    """
    if copies == 0:
        return []  # no need to cut every tweet into words
    rng = random.Random(seed)
    out = []
    for t in tweets:
        if t.sentiment not in AUGMENTED_SENTIMENTS:
            continue
        words = split_words(t.text, max_words)
        located = locate_selection(words, t.selected_text)
        if located is None:
            continue
        first, last = located
        begin = t.text.find(t.selected_text)
        # the span's region verbatim (inner spacing, and a selection that starts or ends mid-word)
        region = t.text[min(begin, words.starts[first]): max(begin + len(t.selected_text), words.ends[last])]
        for k in range(copies):
            before = [words.unit(i) for i in range(first) if rng.random() >= drop]
            after = [words.unit(i) for i in range(last + 1, len(words)) if rng.random() >= drop]
            if len(before) + len(after) == len(words) - (last - first + 1):
                continue  # nothing dropped: the copy would be the tweet itself
            text = " ".join(before + [region.strip()] + after)
            copy_words = split_words(text, max_words)
            copy_located = locate_selection(copy_words, t.selected_text)
            if copy_located is None or [copy_words.unit(i) for i in range(copy_located[0], copy_located[1] + 1)] \
                    != [words.unit(i) for i in range(first, last + 1)]:
                continue
            out.append(LabeledTweet(f"{t.tweet_id}~{k}", text, t.selected_text, t.sentiment))
    return out
