"""The SentencePiece tokenizer trained on the fly: byte fallback, labels, markers, files."""

import json

import pytest

from span_jobs.data import SENTIMENTS
from span_jobs.tokenizer import N_SENTINELS, SPIECE_FILE, Tokenizer, TokenizerError, train_tokenizer


@pytest.mark.parametrize("text", ["{", "<", "}", ">", "{not} <in> the corpus", "😀", "👍🏽 yay", "café", "naïve",
                                  "Ñandú", "שלום", "مرحبا", "日本語", "I love {this} <3 😀 café"])
def test_byte_fallback_round_trips_characters_the_corpus_lacks(tokenizer, text):
    ids = tokenizer.sp.encode(text)
    assert tokenizer.sp.unk_id() not in ids
    assert tokenizer.sp.decode(ids) == text


def test_unseen_characters_really_go_through_byte_pieces(tokenizer):
    pieces = tokenizer.sp.encode("{", out_type=str)
    assert "<0x7B>" in pieces  # "{" is not in the training text: it must be spelled as a byte
    pieces = tokenizer.sp.encode("😀", out_type=str)
    assert [p for p in pieces if p.startswith("<0x")] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]


def test_sentiment_labels_are_single_distinct_pieces(tokenizer):
    encoded = tokenizer.encode_words(list(SENTIMENTS))
    assert all(len(pieces) == 1 for pieces in encoded), encoded
    assert tuple(p[0] for p in encoded) == tokenizer.label_ids
    assert len(set(tokenizer.label_ids)) == 3
    special = {tokenizer.pad_id, tokenizer.eos_id, tokenizer.sp.unk_id()}
    assert special.isdisjoint(tokenizer.label_ids)
    assert [tokenizer.sp.id_to_piece(i) for i in tokenizer.label_ids] == [f"\u2581{s}" for s in SENTIMENTS]


def test_t5_layout_pad_eos_and_sentinels_on_top(tokenizer):
    assert (tokenizer.pad_id, tokenizer.eos_id) == (0, 1)
    n_pieces = tokenizer.sp.get_piece_size()
    assert tokenizer.vocab_size == n_pieces + N_SENTINELS
    markers = [tokenizer.marker_id(i) for i in range(N_SENTINELS)]
    assert markers[0] == tokenizer.vocab_size - 1  # <extra_id_0> is the last id, as in T5
    assert markers[-1] == n_pieces
    assert len(set(markers)) == N_SENTINELS
    assert min(markers) >= n_pieces  # markers never collide with a real piece


def test_vocab_size_counts_pieces_only(tokenizer):
    # asked for 400 pieces; a small corpus may give fewer (hard_vocab_limit off), never more
    assert 100 < tokenizer.sp.get_piece_size() <= 400


def test_save_and_load_round_trip(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    assert (tmp_path / SPIECE_FILE).read_bytes() == tokenizer.model_proto
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["extra_ids"] == N_SENTINELS
    loaded = Tokenizer.load(tmp_path)
    text = "Sooo SAD i will {miss} you 😀"
    assert loaded.sp.encode(text) == tokenizer.sp.encode(text)
    assert loaded.vocab_size == tokenizer.vocab_size
    assert loaded.label_ids == tokenizer.label_ids


def test_load_without_spiece_model_raises(tmp_path):
    with pytest.raises(TokenizerError, match=SPIECE_FILE):
        Tokenizer.load(tmp_path)


def test_load_garbage_spiece_model_raises(tmp_path):
    (tmp_path / SPIECE_FILE).write_bytes(b"definitely not a protobuf")
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        Tokenizer.load(tmp_path)


def test_training_on_nothing_raises():
    with pytest.raises(TokenizerError, match="no text"):
        train_tokenizer(["", "   ", "\n"], vocab_size=300)


def test_training_is_deterministic():
    texts = [f"tweet number {i} about {w}" for i, w in enumerate(["rain", "sun", "work", "fun"] * 30)]
    a = train_tokenizer(texts, vocab_size=350)
    b = train_tokenizer(texts, vocab_size=350)
    assert a.model_proto == b.model_proto


def test_vocabulary_smaller_than_the_byte_pieces_is_a_tokenizer_error():
    # byte fallback alone needs 256 pieces: a named error, not sentencepiece's RuntimeError
    with pytest.raises(TokenizerError, match="tokenizer training failed"):
        train_tokenizer(["a small corpus of words"] * 20, vocab_size=100)
