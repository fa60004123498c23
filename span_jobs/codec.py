"""Turning tweets into T5 inputs and targets, and padded batches into tensors.

Span task (the seed's SQuAD format, with word markers so the answer is a pointer):
    question: negative context: <m0> Sooo <m1> SAD <lex--> <m2> I ...   ->   <m1> <m1>
The target names the first and last word of the span, so any output maps to exact
character offsets and the model never has to spell text. Sentiment task, same model:
    sentiment: Sooo SAD I ...   ->   negative
"""

from dataclasses import dataclass

import torch

from .data import SENTIMENTS
from .lexicon import valence_bucket
from .tokenizer import N_SENTINELS, Tokenizer
from .words import Words, split_words

MAX_PIECES_PER_WORD = 16  # a 10k-character "word" must not blow up the batch; offsets come from words anyway


@dataclass(frozen=True, slots=True)
class Batch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)


class Codec:
    def __init__(self, tokenizer: Tokenizer, max_words: int = N_SENTINELS):
        self.tok = tokenizer
        self.max_words = max_words
        self._span_prefix = {s: self._pieces(f"question: {s} context:".split()) for s in SENTIMENTS}
        self._sentiment_prefix = self._pieces(["sentiment:"])
        # marker index of every vocabulary id, -1 for ordinary pieces: lets decoding mask in one op
        index = torch.full((tokenizer.vocab_size,), -1, dtype=torch.long)
        for i in range(N_SENTINELS):
            index[tokenizer.marker_id(i)] = i
        self.marker_index = index

    def _pieces(self, words: list[str]) -> list[int]:
        return [p for pieces in self.tok.encode_words(words) for p in pieces[:MAX_PIECES_PER_WORD]]

    def words(self, text: str) -> Words:
        return split_words(text, self.max_words)

    def _word_ids(self, tweets: list[Words], with_markers: bool) -> list[tuple[list[int], list[int]]]:
        """Of each tweet: each word's marker (span task), its pieces, then its lexicon valence piece if it
        has one; and the position where each word's ids begin.

        Marker before the word scored 0.497 after one epoch, marker after it 0.474 (small preset). All the
        tweets' words go to the tokenizer in one call: one call per tweet took 0.4 s of 2,424 tweets, one
        for all 0.015 s.
        """
        units = [[words.unit(i) for i in range(len(words))] for words in tweets]
        pieces = iter(self.tok.encode_words([unit for tweet in units for unit in tweet]))
        lexicon_ids = self.tok.lexicon_ids
        encoded = []
        for tweet in units:
            ids: list[int] = []
            starts: list[int] = []
            for i, unit in enumerate(tweet):
                starts.append(len(ids))
                if with_markers:
                    ids.append(self.tok.marker_id(i))
                ids.extend(next(pieces)[:MAX_PIECES_PER_WORD])
                if lexicon_ids is not None:
                    bucket = valence_bucket(unit)
                    if bucket is not None:
                        ids.append(lexicon_ids[bucket])
            encoded.append((ids, starts))
        return encoded

    def span_inputs(self, tweets: list[Words], sentiments: list[str]) -> list[list[int]]:
        return [self._span_prefix[s] + ids + [self.tok.eos_id]
                for (ids, _), s in zip(self._word_ids(tweets, with_markers=True), sentiments, strict=True)]

    def sentiment_inputs(self, tweets: list[Words]) -> list[list[int]]:
        return [self._sentiment_prefix + ids + [self.tok.eos_id] for ids, _ in self._word_ids(tweets, with_markers=False)]

    def span_input(self, words: Words, sentiment: str) -> list[int]:
        return self.span_inputs([words], [sentiment])[0]

    def sentiment_input(self, words: Words) -> list[int]:
        return self.sentiment_inputs([words])[0]

    def sentiment_word_starts(self, words: Words) -> list[int] | None:
        """Where each word begins in sentiment_input(words) (the span input marks it with its marker), or None
        if some word has no ids there (no pieces and no lexicon piece), so positions cannot tell its words apart."""
        [(ids, starts)] = self._word_ids([words], with_markers=False)
        if any(b <= a for a, b in zip(starts, starts[1:] + [len(ids)])):
            return None
        return [len(self._sentiment_prefix) + s for s in starts]

    def span_target(self, first: int, last: int) -> list[int]:
        return [self.tok.marker_id(first), self.tok.marker_id(last), self.tok.eos_id]

    def sentiment_target(self, sentiment: str) -> list[int]:
        return [self.tok.label_ids[SENTIMENTS.index(sentiment)], self.tok.eos_id]

    def pad(self, sequences: list[list[int]], pad_value: int | None = None) -> Batch:
        """Right-padded (B, T) tensors built in one allocation."""
        pad_value = self.tok.pad_id if pad_value is None else pad_value
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), pad_value, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        return Batch(ids, mask)


def token_budget_batches(lengths: list[int], token_budget: int, max_batch_size: int) -> list[list[int]]:
    """Indices grouped longest first so that rows x longest row stays within the token budget.

    Sorting by length means little padding; the budget keeps memory flat whatever the lengths.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]  # the first row is the longest
        if current and ((len(current) + 1) * width > token_budget or len(current) >= max_batch_size):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
