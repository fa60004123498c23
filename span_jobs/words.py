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

    def span(self, first: int, last: int) -> tuple[int, int]:
        """Character offsets of the units first..last inclusive."""
        return self.starts[first], self.ends[last]


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
