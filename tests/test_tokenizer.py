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
    assert config["additional_special_tokens"] == [f"<extra_id_{i}>" for i in range(N_SENTINELS)]
    assert (tmp_path / "tokenizer.json").exists()
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


def test_a_saved_model_directory_loads_with_plain_transformers_and_gives_our_token_ids(tokenizer, tmp_path):
    """AutoTokenizer and AutoModelForSeq2SeqLM alone, in a process that has no protobuf (which
    transformers 5 needs to read spiece.model itself): the project's ids, byte fallback included."""
    import subprocess
    import sys

    from span_jobs.model import LoadedModel, ModelMetadata, build_model, save_model

    directory = save_model(LoadedModel(build_model("tiny", tokenizer), tokenizer, ModelMetadata("v", "t")),
                           tmp_path / "model")
    text = "so {happy} <3 to see you again :) 😀 naïve"
    expected = tokenizer.sp.encode(text) + [tokenizer.eos_id]
    script = (
        "import sys, json\n"
        "sys.modules['google'] = sys.modules['google.protobuf'] = None  # no protobuf here\n"
        "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer\n"
        f"tok = AutoTokenizer.from_pretrained({str(directory)!r})\n"
        f"model = AutoModelForSeq2SeqLM.from_pretrained({str(directory)!r})\n"
        f"ids = tok({text!r}).input_ids\n"
        "print(json.dumps({'ids': ids, 'marker': tok.convert_tokens_to_ids('<extra_id_0>'), 'pad': tok.pad_token_id,\n"
        "                  'vocab': model.config.vocab_size, 'decoded': tok.decode(ids, skip_special_tokens=True)}))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["ids"] == expected
    assert got["marker"] == tokenizer.marker_id(0) and got["pad"] == tokenizer.pad_id
    assert got["vocab"] == tokenizer.vocab_size
    assert got["decoded"] == text


def test_the_shipped_default_model_loads_with_plain_transformers():
    from transformers import AutoTokenizer

    from span_jobs.model import DEFAULT_MODEL_DIR
    from span_jobs.tokenizer import Tokenizer

    text = "How did we just get paid and still be broke as hell?! {sigh}"
    ours = Tokenizer.load(DEFAULT_MODEL_DIR)
    assert AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)(text).input_ids == ours.sp.encode(text) + [ours.eos_id]
