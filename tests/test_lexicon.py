"""The lexicon feature: which words get a valence piece, and that it reaches the model's input."""

from span_jobs.codec import Codec
from span_jobs.lexicon import LEXICON_SYMBOLS, load_lexicon, valence_bucket


def test_buckets_follow_vader_valences():
    lexicon = load_lexicon()
    assert len(lexicon) > 7000
    assert lexicon["good"] > 1.5 and valence_bucket("good") == 0  # strong positive
    assert valence_bucket("ok") == 1  # mild positive (0.9)
    assert valence_bucket("SAD!!!") == 3  # case and edge punctuation do not hide a word
    assert valence_bucket(":(") is not None and valence_bucket(":(") >= 2  # emoticons as written
    assert valence_bucket("table") is None
    assert valence_bucket("") is None


def test_valence_pieces_follow_rated_words_in_both_tasks(tokenizer):
    assert tokenizer.lexicon_ids is not None
    codec = Codec(tokenizer)
    words = codec.words("so SAD today :) table")
    for ids in (codec.span_input(words, "negative"), codec.sentiment_input(words)):
        pieces = [tokenizer.sp.id_to_piece(i) for i in ids if i < tokenizer.sp.get_piece_size()]
        found = [p for p in pieces if p in LEXICON_SYMBOLS]
        assert found == ["<lex-->", "<lex+>"] or found == ["<lex-->", "<lex++>"]
    span_ids = codec.span_input(words, "negative")
    sad = span_ids.index(tokenizer.marker_id(1))
    assert tokenizer.lexicon_ids[3] in span_ids[sad + 1 : span_ids.index(tokenizer.marker_id(2))]
