"""Made-up tweets with known spans: for the demo, tests and benchmarks. No third-party data.

Positive and negative tweets wrap a sentiment phrase in neutral filler, so the right span is
known; neutral tweets' span is the whole tweet, as in the Kaggle labels.
"""

import random

from .data import LabeledTweet

PHRASES = {
    "positive": ["love it", "so happy", "great day", "awesome", "best weekend ever", "thank you so much",
                 "really good", "can't wait", "beautiful", "fun night"],
    "negative": ["hate this", "so sad", "awful", "worst day ever", "really tired", "miss you",
                 "sucks", "so bored", "feel sick", "broke as hell"],
}
OPENERS = ["just got home", "at work", "watching tv", "this morning", "finally friday", "on the bus",
           "lunch break", "@friend", "omg", "well"]
CLOSERS = ["lol", "!!", "...", "http://t.co/x", "#monday", "haha", "", "today", "tonight", "again"]
NEUTRAL = ["going to the store later", "meeting at 5 tomorrow", "the bus is late again",
           "new phone arrives thursday", "reading the news", "cooking dinner now", "back in the office",
           "check the link", "watching the game", "heading out"]


def synthetic_tweets(n: int, seed: int = 0, prefix: str = "s") -> list[LabeledTweet]:
    rng = random.Random(seed)
    tweets = []
    for i in range(n):
        sentiment = ("positive", "negative", "neutral")[i % 3]
        if sentiment == "neutral":
            text = f"{rng.choice(OPENERS)} {rng.choice(NEUTRAL)} {rng.choice(CLOSERS)}".strip()
            selected = text
        else:
            selected = rng.choice(PHRASES[sentiment])
            text = f"{rng.choice(OPENERS)} {selected} {rng.choice(CLOSERS)}".strip()
        if rng.random() < 0.2:
            text = " " + text  # raw tweets keep odd leading spaces
        tweets.append(LabeledTweet(f"{prefix}{seed:02d}{i:06d}", text, selected, sentiment))
    return tweets
