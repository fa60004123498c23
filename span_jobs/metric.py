"""The competition's metric: word-level Jaccard."""

from collections.abc import Iterable


def jaccard(predicted: str, truth: str) -> float:
    """Word-level Jaccard on lower-cased, whitespace-split words; two empty strings score 1."""
    a = set(predicted.lower().split())
    b = set(truth.lower().split())
    if not a and not b:
        return 1.0
    common = len(a & b)
    return common / (len(a) + len(b) - common)


def mean_jaccard(predicted: Iterable[str], truth: Iterable[str]) -> float:
    """Average Jaccard over aligned pairs; 0.0 for no pairs."""
    scores = [jaccard(p, t) for p, t in zip(predicted, truth, strict=True)]
    return sum(scores) / len(scores) if scores else 0.0
