"""Words of a tweet, their offsets into the raw text, and where a label sits among them."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from span_jobs.words import locate_selection, split_words

# Characters that make whitespace handling hard: every kind of Unicode whitespace str.split()
# knows (including the separators \x1c-\x1f and \x85), zero-width characters (not whitespace),
# RTL text and marks, emoji with modifiers and joiners, and the characters T5's vocabulary lacks.
TRICKY = [
    " ", "  ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85",
    "\u00a0", "\u1680", "\u2000", "\u2009", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000",
    "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u180e",
    "\u200f", "\u202e", "שלום", "مرحبا", "😀", "👍🏽", "👩\u200d👩\u200d👧", "🇺🇸",
    "{", "}", "<", ">", "e\u0301", "ß", "İ", "word", "W0rd!", "...",
]
unicode_text = st.lists(
    st.one_of(st.sampled_from(TRICKY), st.text(st.characters(exclude_categories=("Cs",)), max_size=6)),
    max_size=30,
).map("".join)


def units(words):
    return [words.unit(i) for i in range(len(words))]


def test_offsets_point_at_the_words_of_str_split():
    text = "  Sooo SAD\tI will\n\nmiss you here in San Diego!!!  "
    words = split_words(text, 100)
    assert units(words) == text.split()
    assert words.starts[0] == 2
    assert words.ends[-1] == len(text) - 2
    assert words.span(0, 1) == (2, 10)
    assert text[slice(*words.span(0, 1))] == "Sooo SAD"


def test_no_words_in_blank_text():
    assert len(split_words("", 10)) == 0
    assert len(split_words(" \t\n\u3000 ", 10)) == 0


def test_words_past_max_units_merge_into_the_last_unit_covering_the_tail():
    text = "one two  three four\tfive six seven "
    words = split_words(text, 4)
    assert len(words) == 4
    assert units(words)[:3] == ["one", "two", "three"]
    # the last unit runs from the 4th word to the end of the last word, whitespace inside kept
    assert words.unit(3) == "four\tfive six seven"
    assert words.ends[3] == len(text.rstrip())
    # every word is still reachable: the whole tweet is a span of units
    first, last = words.span(0, 3)
    assert text[first:last] == text.strip()


def test_exactly_max_units_words_do_not_merge():
    words = split_words("a b c", 3)
    assert units(words) == ["a", "b", "c"]


def test_max_units_one_is_the_whole_stripped_text():
    text = " a b  c "
    words = split_words(text, 1)
    assert units(words) == ["a b  c"]


def test_max_units_must_be_positive():
    with pytest.raises(ValueError, match="max_units"):
        split_words("a b", 0)


@pytest.mark.parametrize(
    ("text", "selected", "expected"),
    [
        ("Sooo SAD I will miss you", "Sooo SAD", (0, 1)),
        ("Sooo SAD I will miss you", "miss you", (4, 5)),
        # a label that cuts a word widens to the whole word
        ("I`m gonna cry now", "onna", (1, 1)),
        ("I`m gonna cry now", "onna c", (1, 2)),
        ("I`m gonna cry now", "m gon", (0, 1)),
        # labels with surrounding whitespace cover only the words they touch
        ("so  sad today", " sad ", (1, 1)),
        # the first occurrence wins
        ("good good bad good", "good", (0, 0)),
        # punctuation attached to a word belongs to it
        ("what a day!!!", "day", (2, 2)),
    ],
)
def test_locate_selection(text, selected, expected):
    assert locate_selection(split_words(text, 100), selected) == expected


@pytest.mark.parametrize("selected", ["", " ", "\t\n", "xyz", "sad", "Sooo  SAD"])
def test_locate_selection_none_for_blank_or_not_a_substring(selected):
    # "sad" is not there: the search is case-sensitive, as the label must be a substring
    assert locate_selection(split_words("Sooo SAD I will miss you", 100), selected) is None


def test_locate_selection_inside_the_merged_tail():
    text = "a b c d e f g"
    words = split_words(text, 3)
    assert locate_selection(words, "f") == (2, 2)
    assert locate_selection(words, "b c d") == (1, 2)


@given(unicode_text)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_words_are_str_split_for_any_unicode_text(text):
    words = split_words(text, 10_000)
    assert units(words) == text.split()
    for start, end in zip(words.starts, words.ends):
        assert text[start:end].strip() == text[start:end] != ""
        assert start == 0 or text[start - 1].isspace()
        assert end == len(text) or text[end].isspace()


@given(unicode_text, st.integers(min_value=1, max_value=6))
@settings(max_examples=200, deadline=None)
def test_merged_units_keep_every_word_reachable(text, max_units):
    expected = text.split()
    words = split_words(text, max_units)
    got = units(words)
    assert len(got) == min(max_units, len(expected))
    if len(expected) > max_units:
        assert got[:-1] == expected[: max_units - 1]
        assert got[-1].split() == expected[max_units - 1 :]
    else:
        assert got == expected
    if got:
        start, end = words.span(0, len(words) - 1)
        assert text[start:end] == text.strip()


@given(unicode_text, st.data())
@settings(max_examples=200, deadline=None)
def test_locate_selection_covers_any_substring_label(text, data):
    words = split_words(text, 10_000)
    if not len(words):
        return
    begin = data.draw(st.integers(0, len(text) - 1))
    end = data.draw(st.integers(begin + 1, len(text)))
    selected = text[begin:end]
    located = locate_selection(words, selected)
    if not selected.strip():
        assert located is None
        return
    assert located is not None
    first, last = located
    found = text.find(selected)
    core_begin = found + len(selected) - len(selected.lstrip())  # first non-space character
    core_end = found + len(selected.rstrip())  # after the last non-space character
    # the first unit holds the label's first character, the last unit its last one
    assert words.starts[first] <= core_begin < words.ends[first]
    assert words.starts[last] < core_end <= words.ends[last]
    assert first <= last


def test_real_tweets_split_like_str_split(real_labeled):
    from span_jobs.data import read_labeled

    for tweet in read_labeled(real_labeled).tweets:
        words = split_words(tweet.text, 100)
        assert units(words) == tweet.text.split()
        assert locate_selection(words, tweet.selected_text) is not None, tweet
