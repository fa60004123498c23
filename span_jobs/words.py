"""Words of a tweet and their character offsets: the units a span is made of.

The metric splits on whitespace, so a span is a run of whole whitespace-separated
words and its offsets always point into the raw text: ``text[start:end]`` is the span.
"""

import re
from dataclasses import dataclass

# \S in a str pattern is the complement of str.isspace(), the same split str.split() uses.
_WORD = re.compile(r"\S+")


@dataclass(frozen=True, slots=True)
class Words:
    """A tweet cut into at most ``max_units`` word units with character offsets."""

    text: str
    starts: tuple[int, ...]
    ends: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.starts)

    def unit(self, i: int) -> str:
        return self.text[self.starts[i] : self.ends[i]]

    def span(self, first: int, last: int, label_shift: bool = False) -> tuple[int, int]:
        """Character offsets of the units first..last inclusive; with label_shift, where the labels
        would have put them (labeled_offsets)."""
        start, end = self.starts[first], self.ends[last]
        return labeled_offsets(self.text, start, end) if label_shift else (start, end)


def split_words(text: str, max_units: int) -> Words:
    """Cut text into whitespace words; words past ``max_units - 1`` merge into the last unit.

    The merge keeps every character reachable by a span while the model only needs
    ``max_units`` markers (T5 has 100 sentinel tokens); real tweets have under 40 words.
    """
    if max_units < 1:
        raise ValueError("max_units must be at least 1")
    matches = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    if len(matches) > max_units:
        head = matches[: max_units - 1]
        matches = head + [(matches[max_units - 1][0], matches[-1][1])]
    return Words(text, tuple(s for s, _ in matches), tuple(e for _, e in matches))


def locate_selection(words: Words, selected: str) -> tuple[int, int] | None:
    """Word units (first, last) covered by the first occurrence of ``selected`` in the text.

    Returns None when the selection is blank or not a substring of the text.
    Labels that cut a word ("onna" for "gonna") widen to the whole word.
    """
    if not selected.strip():
        return None
    begin = words.text.find(selected)
    if begin < 0:
        return None
    end = begin + len(selected)
    covered = [i for i in range(len(words)) if words.starts[i] < end and words.ends[i] > begin]
    if not covered:
        return None
    return covered[0], covered[-1]


# ---- label noise from extra whitespace ("the magic" of the 2020 Kaggle competition) ---------------
# The annotators marked spans on the tweet with its whitespace collapsed, and those offsets were
# applied to the raw text: after runs of extra spaces a gold span starts early (a cut word such as
# "y adore" for "adore") and, past two extra spaces, ends early too. Fitted on the choice part of
# validation with the shipped model's predictions (shared/notes/quality-levers.md; issue 12).
LABEL_SHIFT_FROM = 2  # fewer extra spaces before a span than this leave its start where it is
LABEL_END_SLACK = 2  # the end moves by the extra spaces before it beyond this many


def extra_spaces_before(text: str, pos: int) -> int:
    """Whitespace characters before ``pos`` that collapsing the text (" ".join(text.split())) drops:
    all leading whitespace and every repeat inside a run."""
    count, after_space = 0, True  # leading whitespace counts in full
    for c in text[:pos]:
        if c.isspace():
            count += after_space
            after_space = True
        else:
            after_space = False
    return count


def labeled_offsets(text: str, start: int, end: int) -> tuple[int, int]:
    """Where the labels put a span whose true offsets are (start, end): the inverse of repair_selection.

    Predicting this shifted span instead of the clean one scores higher against such labels.
    """
    shifted = _labeled_start(text, start), _labeled_end(text, end)
    return shifted if shifted[1] > shifted[0] else (start, end)


def repair_selection(text: str, selected: str) -> str:
    """The span the annotator meant: a selection that labeled_offsets shifted is moved back onto
    whole words; any other selection comes back as it is."""
    begin = text.find(selected)
    if begin < 0 or not selected.strip():
        return selected
    end = begin + len(selected)
    words = split_words(text, len(text) + 1)
    # a label on word boundaries is taken as meant; the shifts only grow along the text, so the
    # first word boundary that maps onto a cut label is the one
    start, stop = begin, end
    if begin not in words.starts:
        start = next((s for s in words.starts if s > begin and _labeled_start(text, s) == begin), begin)
    if end not in words.ends:
        stop = next((e for e in words.ends if e > end and _labeled_end(text, e) == end), end)
    if (start, stop) == (begin, end) or stop <= start:
        return selected
    return text[start:stop]


def _labeled_start(text: str, start: int) -> int:
    extra = extra_spaces_before(text, start)
    return start - extra if extra >= LABEL_SHIFT_FROM else start


def _labeled_end(text: str, end: int) -> int:
    return end - max(0, extra_spaces_before(text, end) - LABEL_END_SLACK)
