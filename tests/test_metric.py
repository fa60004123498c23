"""Word-level Jaccard, checked against hand-computed values."""

import pytest

from span_jobs.metric import jaccard, mean_jaccard


@pytest.mark.parametrize(
    ("predicted", "truth", "expected"),
    [
        ("broke as hell", "broke as hell", 1.0),
        # {broke, as, hell} vs {broke}: 1 common / 3 in the union
        ("broke as hell", "broke", 1 / 3),
        # case does not matter
        ("SOOO SAD", "sooo sad", 1.0),
        ("Sad", "sAD", 1.0),
        # words are a set: repeats count once. {good} vs {good, day} -> 1/2
        ("good good good", "good day", 0.5),
        ("ha ha ha", "ha", 1.0),
        # punctuation stays attached to its word: "sad!" is not "sad"
        ("sad!", "sad", 0.0),
        ("so sad!!", "so sad", 1 / 3),  # {so, sad!!} vs {so, sad}: 1 / 3
        ("it's", "its", 0.0),
        # two empty strings agree perfectly; one empty scores nothing
        ("", "", 1.0),
        ("   ", "\t\n", 1.0),
        ("", "sad", 0.0),
        ("sad", "", 0.0),
        ("  \n ", "sad", 0.0),
        # any whitespace run separates words: spaces, tabs, newlines
        ("miss  you\there", "miss you here", 1.0),
        ("miss\n\nyou", "miss you", 1.0),
        ("  leading and trailing  ", "leading and trailing", 1.0),
        # disjoint words
        ("happy", "sad", 0.0),
        # {a, b, c, d} vs {c, d, e}: 2 / 5
        ("a b c d", "c d e", 0.4),
    ],
)
def test_jaccard_hand_computed(predicted, truth, expected):
    assert jaccard(predicted, truth) == pytest.approx(expected)


def test_jaccard_is_symmetric():
    pairs = [("a b c", "b c d e"), ("x", "x y"), ("", "y"), ("Hi there", "hi")]
    for a, b in pairs:
        assert jaccard(a, b) == pytest.approx(jaccard(b, a))


def test_jaccard_only_splits_on_whitespace_not_on_unicode_punctuation():
    # "sad…" (with an ellipsis character) is one word, distinct from "sad"
    assert jaccard("sad\u2026", "sad") == 0.0
    # a non-breaking space IS whitespace for str.split(), so these are the same two words
    assert jaccard("so\u00a0sad", "so sad") == 1.0


def test_mean_jaccard_averages_pairs():
    predicted = ["broke as hell", "", "good"]
    truth = ["broke", "", "bad"]
    assert mean_jaccard(predicted, truth) == pytest.approx((1 / 3 + 1.0 + 0.0) / 3)


def test_mean_jaccard_of_nothing_is_zero():
    assert mean_jaccard([], []) == 0.0


def test_mean_jaccard_accepts_iterators():
    assert mean_jaccard(iter(["a", "b"]), iter(["a", "c"])) == pytest.approx(0.5)


def test_mean_jaccard_refuses_misaligned_inputs():
    with pytest.raises(ValueError):
        mean_jaccard(["a", "b"], ["a"])
