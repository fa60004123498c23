"""Batched constrained extraction: spans are whole words of the raw text, whatever the batch."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import LogitsProcessorList, T5Config, T5ForConditionalGeneration

from span_jobs.codec import MAX_PIECES_PER_WORD, Codec, token_budget_batches
from span_jobs.data import SENTIMENTS
from span_jobs.extract import (FullTextExtractor, OutputMemo, SpanCandidates, SpanExtractor, WordSpanConstraint,
                               annotate, choose_span, expected_jaccard, expected_jaccard_at)
from span_jobs.metric import mean_jaccard
from span_jobs.model import build_model, encode, load_model_dir, pointer_keys, span_logits
from span_jobs.words import split_words

LONG = " ".join(["i just got home from work and the movie was on"] * 6) + " so sad!!!"  # 67 words
VARIED = [
    "ugh",
    LONG,
    "  I love this day so much  ",
    "what a great day at the beach with my friends lol",
    "\tso  tired\nof work {today} <3 😀",
    "ok",
]
TRICKY = [
    " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\x85", "\u2028",
    "\u200b", "\u200d", "\ufeff", "\u200f", "\u202e", "שלום", "مرحبا", "😀", "👍🏽", "👩\u200d👩\u200d👧",
    "{", "}", "<", ">", "<3", "e\u0301", "café", "love", "hate", "happy", "sad!!!", "work", "day", "lol",
]
tweet_text = st.lists(
    st.one_of(st.sampled_from(TRICKY), st.text(st.characters(exclude_categories=("Cs",)), max_size=5)),
    max_size=25,
).map("".join)
sentiment_or_none = st.one_of(st.none(), st.sampled_from(SENTIMENTS))


def assert_whole_word_span(text, result):
    assert 0 <= result.start <= result.end <= len(text)
    assert text[result.start : result.end] == result.span
    words = text.split()
    if not words:
        assert (result.start, result.end, result.span) == (0, 0, "")
        return
    assert result.span, "a tweet with words gets a non-empty span"
    assert result.start == 0 or text[result.start - 1].isspace()
    assert result.end == len(text) or text[result.end].isspace()
    assert not result.span[0].isspace() and not result.span[-1].isspace()
    span_words = result.span.split()
    # a contiguous run of the tweet's own words
    assert any(words[i : i + len(span_words)] == span_words for i in range(len(words) - len(span_words) + 1))


def same_result(a, b):
    assert (a.span, a.start, a.end, a.sentiment, a.sentiment_given) == (b.span, b.start, b.end, b.sentiment, b.sentiment_given)
    if a.sentiment_prob is None:
        assert b.sentiment_prob is None
    else:
        assert a.sentiment_prob == pytest.approx(b.sentiment_prob, abs=1e-5)


# ---- the padded-batch property -------------------------------------------------------------
@pytest.mark.parametrize("sentiments", [None, ["negative", "neutral", "positive", "positive", "negative", "neutral"]])
def test_result_in_a_padded_batch_equals_result_alone(trained_extractor, sentiments):
    batched = trained_extractor.extract(VARIED, sentiments)
    for i, text in enumerate(VARIED):
        [alone] = trained_extractor.extract([text], None if sentiments is None else [sentiments[i]])
        same_result(batched[i], alone)
        assert_whole_word_span(text, batched[i])


def test_small_token_budget_gives_the_same_results(trained_model_dir, trained_extractor):
    small = SpanExtractor(load_model_dir(trained_model_dir), device="cpu", token_budget=64, max_batch_size=2,
                          precision="float32")
    for a, b in zip(small.extract(VARIED * 2), trained_extractor.extract(VARIED * 2), strict=True):
        same_result(a, b)


@given(st.lists(st.tuples(tweet_text, sentiment_or_none), min_size=2, max_size=6))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_padded_batch_property_on_random_tweets(trained_extractor, rows):
    texts = [t for t, _ in rows]
    sentiments = [s for _, s in rows]
    batched = trained_extractor.extract(texts, sentiments)
    for i, (text, sentiment) in enumerate(rows):
        same_result(batched[i], trained_extractor.extract([text], [sentiment])[0])


# ---- spans are exact offsets of whole words ---------------------------------------------------
@given(st.lists(st.tuples(tweet_text, sentiment_or_none), min_size=1, max_size=5))
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_span_is_whole_words_of_the_raw_text(trained_extractor, rows):
    texts = [t for t, _ in rows]
    results = trained_extractor.extract(texts, [s for _, s in rows])
    assert len(results) == len(texts)
    for text, (_, sentiment), result in zip(texts, rows, results):
        assert_whole_word_span(text, result)
        if sentiment is not None:
            assert result.sentiment == sentiment


@pytest.fixture(scope="module")
def one_unit_extractor(trained_model_dir):
    """An extractor whose codec cuts every tweet into a single unit: the only possible span is all of it."""
    extractor = SpanExtractor(load_model_dir(trained_model_dir), device="cpu")
    extractor.codec = Codec(extractor.codec.tok, max_words=1)
    return extractor


@given(st.lists(st.tuples(tweet_text, sentiment_or_none), min_size=1, max_size=5))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_offsets_map_back_exactly_when_the_span_is_forced(one_unit_extractor, rows):
    # the model cannot choose here, so this checks the mapping from markers to raw-text offsets
    texts = [t for t, _ in rows]
    for text, result in zip(texts, one_unit_extractor.extract(texts, [s for _, s in rows]), strict=True):
        stripped = text.strip()
        assert result.span == stripped
        assert text[result.start : result.end] == stripped
        if stripped:
            assert result.start == len(text) - len(text.lstrip())
        else:
            assert (result.start, result.end) == (0, 0)


def test_untrained_model_also_gives_whole_word_spans(tiny_model_dir):
    extractor = SpanExtractor(load_model_dir(tiny_model_dir), device="cpu")
    for text, result in zip(VARIED, extractor.extract(VARIED), strict=True):
        assert_whole_word_span(text, result)


def test_tweet_longer_than_the_markers_can_still_be_spanned(trained_extractor):
    text = " ".join(f"w{i}" for i in range(150)) + "  end!"
    [result] = trained_extractor.extract([text], ["neutral"])
    assert_whole_word_span(text, result)


def test_a_huge_word_does_not_blow_up_the_input(trained_extractor, tokenizer):
    text = "so " + "a{" * 5000 + " sad"
    codec = trained_extractor.codec
    assert len(codec.span_input(codec.words(text), "negative")) < 10 + 3 * (MAX_PIECES_PER_WORD + 1)
    [result] = trained_extractor.extract([text], ["negative"])
    assert_whole_word_span(text, result)


# ---- sentiment given or predicted --------------------------------------------------------------
def test_given_sentiment_is_kept_without_probability(trained_extractor):
    results = trained_extractor.extract(["i love it", "i hate it"], ["positive", "negative"])
    assert [(r.sentiment, r.sentiment_prob, r.sentiment_given) for r in results] == [
        ("positive", None, True), ("negative", None, True)
    ]


def test_missing_sentiment_is_predicted_with_a_probability(trained_extractor):
    results = trained_extractor.extract(["i love it", "i hate it", ""], None)
    for r in results:
        assert r.sentiment in SENTIMENTS
        assert r.sentiment_given is False
        # the best of three labels: at least a third, at most one
        assert 1 / 3 - 1e-6 <= r.sentiment_prob <= 1.0


def test_mixed_given_and_missing(trained_extractor):
    results = trained_extractor.extract(["i love it", "i hate it"], [None, "negative"])
    assert results[0].sentiment_given is False and results[0].sentiment_prob is not None
    assert results[1].sentiment_given is True and results[1].sentiment_prob is None
    assert results[1].sentiment == "negative"


def test_tagged_sentiment_probability_is_the_softmax_over_three_labels(trained_extractor):
    codec = trained_extractor.codec
    words = codec.words("what a great day")
    batch = codec.pad([codec.sentiment_input(words)])
    with torch.no_grad():
        start = torch.zeros((1, 1), dtype=torch.long)
        logits = trained_extractor.model(batch.input_ids, batch.attention_mask, start)[0, 0]
    raw = logits[list(codec.tok.label_ids)]
    assert torch.allclose(trained_extractor.sentiment_logits([words])[0], raw, atol=1e-5)
    # calibrated: the model's own vector scaling of the three logits (calibration.fit_vector_scaling)
    p = (raw * trained_extractor.sentiment_logit_scale + trained_extractor.sentiment_logit_bias).softmax(-1)
    [result] = trained_extractor.extract(["what a great day"], None)
    assert result.sentiment == SENTIMENTS[int(p.argmax())]
    assert result.sentiment_prob == pytest.approx(float(p.max()), abs=1e-6)


@pytest.mark.parametrize("text", ["", " ", "   \t\n ", "\u3000\u00a0"])
@pytest.mark.parametrize("sentiment", [None, "positive"])
def test_empty_and_blank_texts_give_the_empty_span(trained_extractor, text, sentiment):
    [result] = trained_extractor.extract([text], [sentiment])
    assert (result.span, result.start, result.end) == ("", 0, 0)
    assert result.sentiment in SENTIMENTS


@pytest.mark.parametrize("bad", ["Positive", "joy", "", "POSITIVE"])
def test_unknown_sentiment_raises(trained_extractor, bad):
    with pytest.raises(ValueError, match="unknown sentiment"):
        trained_extractor.extract(["i love it", "ok"], ["neutral", bad])


def test_sentiments_must_match_texts(trained_extractor):
    with pytest.raises(ValueError, match="differ in length"):
        trained_extractor.extract(["a", "b"], ["neutral"])


def test_no_texts_no_results(trained_extractor):
    assert trained_extractor.extract([], None) == []


def test_annotate_columns(trained_extractor):
    texts = ["i love it", "  so sad  ", ""]
    columns = annotate(trained_extractor, texts, [None, "negative", None])
    assert set(columns) == {"sentiment", "is_sentiment_given", "sentiment_prob", "span", "span_start", "span_end",
                            "span_confidence", "model_version"}
    assert all(len(v) == 3 for v in columns.values())
    assert all(0.0 <= c <= 1.0 for c in columns["span_confidence"])
    assert columns["model_version"] == [trained_extractor.version] * 3
    assert columns["is_sentiment_given"] == [False, True, False]
    assert columns["sentiment_prob"][1] is None
    for text, span, start, end in zip(texts, columns["span"], columns["span_start"], columns["span_end"]):
        assert text[start:end] == span


# ---- the constraint, step by step -------------------------------------------------------------
def allowed_ids(scores_row):
    return {i for i, v in enumerate(scores_row.tolist()) if v != -math.inf}


def test_word_span_constraint_masks_exactly(tokenizer):
    codec = Codec(tokenizer)
    m = tokenizer.marker_id
    n_words = torch.tensor([3, 1, 5])
    constraint = WordSpanConstraint(codec.marker_index, n_words, tokenizer.eos_id)
    scores = torch.randn(3, tokenizer.vocab_size)

    # step 0: any marker of the row's own words, nothing else
    out = constraint(torch.zeros((3, 1), dtype=torch.long), scores.clone())
    assert [allowed_ids(r) for r in out] == [{m(0), m(1), m(2)}, {m(0)}, {m(i) for i in range(5)}]
    keep = out != -math.inf
    assert torch.equal(out[keep], scores[keep])  # allowed scores are untouched

    # step 1: markers at or after the first one, still within the row's words
    step1 = torch.tensor([[0, m(1)], [0, m(0)], [0, m(4)]])
    out = constraint(step1, scores.clone())
    assert [allowed_ids(r) for r in out] == [{m(1), m(2)}, {m(0)}, {m(4)}]

    # after two markers: only the end of sequence
    step2 = torch.cat([step1, torch.tensor([[m(2)], [m(0)], [m(4)]])], dim=1)
    out = constraint(step2, scores.clone())
    assert [allowed_ids(r) for r in out] == [{tokenizer.eos_id}] * 3


def test_word_span_constraint_expands_to_beams(tokenizer):
    codec = Codec(tokenizer)
    constraint = WordSpanConstraint(codec.marker_index, torch.tensor([2, 4]), tokenizer.eos_id)
    out = constraint(torch.zeros((4, 1), dtype=torch.long), torch.zeros(4, tokenizer.vocab_size))
    sizes = [len(allowed_ids(r)) for r in out]
    assert sizes == [2, 2, 4, 4]  # rows are (tweet, beam), tweet-major, as generate() lays them out


@pytest.mark.parametrize("num_beams", [1, 3])
def test_word_span_constraint_inside_hf_generate(trained_extractor, trained_model_dir, num_beams):
    """The benchmarks' Hugging Face ways: transformers' T5 on our model directory, constrained."""
    codec = trained_extractor.codec
    texts = ["i love this day so much", "ugh", LONG]
    words = [codec.words(t) for t in texts]
    batch = codec.pad([codec.span_input(w, "positive") for w in words])
    n_words = torch.tensor([len(w) for w in words])
    constraint = WordSpanConstraint(codec.marker_index, n_words, codec.tok.eos_id)
    out = T5ForConditionalGeneration.from_pretrained(trained_model_dir, dtype=torch.float32).generate(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=3, num_beams=num_beams,
        do_sample=False, logits_processor=LogitsProcessorList([constraint]),
    )
    for row, n in zip(out.tolist(), n_words.tolist()):
        first, last = codec.marker_index[row[1]].item(), codec.marker_index[row[2]].item()
        assert 0 <= first <= last < n
        assert row[3] == codec.tok.eos_id


# ---- the model input ---------------------------------------------------------------------------
def test_span_input_puts_a_marker_before_each_word(tokenizer):
    codec = Codec(tokenizer)
    words = split_words("  so sad today ", 100)
    ids = codec.span_input(words, "negative")
    assert ids[-1] == tokenizer.eos_id
    markers = [i for i in ids if codec.marker_index[i] >= 0]
    assert markers == [tokenizer.marker_id(0), tokenizer.marker_id(1), tokenizer.marker_id(2)]
    assert tokenizer.label_ids[0] in ids[: ids.index(markers[0])]  # the sentiment is in the question
    assert codec.span_target(1, 2) == [tokenizer.marker_id(1), tokenizer.marker_id(2), tokenizer.eos_id]


def test_inputs_of_many_tweets_are_each_tweets_own(tokenizer):
    codec = Codec(tokenizer)
    texts = ["so sad today", "", "i love this day so much :)", "ugh", "  spaced   out  words "]
    tweets = [split_words(t, 100) for t in texts]
    sentiments = ["negative", "neutral", "positive", "negative", "neutral"]
    alone = [tokenizer.encode_words([w.unit(i) for i in range(len(w))]) for w in tweets]  # one tweet per call
    spans, labels = codec.span_inputs(tweets, sentiments), codec.sentiment_inputs(tweets)
    for words, sentiment, pieces, span_ids, sentiment_ids in zip(tweets, sentiments, alone, spans, labels):
        assert span_ids == codec.span_input(words, sentiment) and sentiment_ids == codec.sentiment_input(words)
        plain = [i for i in sentiment_ids if i not in (tokenizer.lexicon_ids or ())]
        assert plain == codec.sentiment_inputs([split_words("", 100)])[0][:-1] + sum(pieces, []) + [tokenizer.eos_id]


def test_pad_builds_right_padded_tensors(tokenizer):
    batch = Codec(tokenizer).pad([[5, 6, 7], [8]])
    assert batch.input_ids.tolist() == [[5, 6, 7], [8, tokenizer.pad_id, tokenizer.pad_id]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]


# ---- token-budget batches ------------------------------------------------------------------------
def test_token_budget_batches_example():
    lengths = [10, 50, 20, 50, 5]
    batches = token_budget_batches(lengths, token_budget=100, max_batch_size=8)
    assert batches == [[1, 3], [2, 0, 4]]  # longest first; 2 x 50 and 3 x 20 fit in 100


def test_token_budget_batches_single_row_over_budget():
    assert token_budget_batches([500, 3], token_budget=100, max_batch_size=8) == [[0], [1]]


def test_token_budget_batches_empty():
    assert token_budget_batches([], token_budget=100, max_batch_size=8) == []


@given(
    st.lists(st.integers(1, 400), max_size=80),
    st.integers(1, 3000),
    st.integers(1, 32),
)
@settings(max_examples=300, deadline=None)
def test_token_budget_batches_properties(lengths, budget, max_batch_size):
    batches = token_budget_batches(lengths, budget, max_batch_size)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every index exactly once
    for b in batches:
        assert 1 <= len(b) <= max_batch_size
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= budget
        assert lengths[b[0]] == max(lengths[i] for i in b)  # the first row sets the padded width


# ---- the baseline ---------------------------------------------------------------------------------
def test_full_text_extractor():
    texts = ["  Sooo SAD I will miss you  ", "", " \t ", "ok"]
    results = FullTextExtractor().extract(texts, ["negative", None, "neutral", None])
    for text, r in zip(texts, results):
        assert text[r.start : r.end] == r.span == text.strip()
    assert (results[0].start, results[0].end) == (2, 26)
    assert (results[1].start, results[1].end) == (0, 0)
    assert [r.sentiment for r in results] == ["negative", "neutral", "neutral", "neutral"]
    assert [r.sentiment_given for r in results] == [True, False, True, False]
    assert [r.sentiment_prob for r in results] == [None, None, None, None]  # it tags, but is no classifier
    assert FullTextExtractor.version == "full-text-baseline"


def test_full_text_baseline_on_real_tweets(real_labeled):
    from span_jobs.data import read_labeled

    tweets = read_labeled(real_labeled).tweets
    results = FullTextExtractor().extract([t.text for t in tweets], [t.sentiment for t in tweets])
    score = mean_jaccard([r.span for r in results], [t.selected_text for t in tweets])
    assert 0.55 < score < 0.63  # the known whole-tweet baseline of this competition (~0.59)


# ---- bugs -------------------------------------------------------------------------------------------
def test_model_with_padded_vocabulary_extracts(tokenizer, tmp_path):
    config = T5Config(vocab_size=tokenizer.vocab_size + 28, d_model=32, d_ff=64, num_heads=2, d_kv=16, num_layers=2,
                      num_decoder_layers=1, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(tmp_path / "t5-padded", safe_serialization=True)
    (tmp_path / "t5-padded" / "spiece.model").write_bytes(tokenizer.model_proto)
    loaded = load_model_dir(tmp_path / "t5-padded")  # accepted: larger vocabularies are allowed
    [result] = SpanExtractor(loaded, device="cpu").extract(["i love this day"], ["positive"])
    assert_whole_word_span("i love this day", result)


def test_expected_jaccard_hedges_where_the_likeliest_span_bets():
    # (0,0) is the likeliest single span, but (3,3) overlaps more of the probability mass:
    # E[J] of (0,0) = .40; of (3,3) = .35 + .25 * 1/2 = .475; of (3,4) = .35/2 + .25 = .425
    first = torch.tensor([[0, 3, 3, 7]])
    last = torch.tensor([[0, 3, 4, 2]])
    logp = torch.tensor([[0.40, 0.35, 0.25, 0.0]]).log()
    expected = expected_jaccard(first, last, logp)
    assert expected[0, :3].tolist() == pytest.approx([0.40, 0.475, 0.425])
    assert expected[0, 3] == float("-inf")  # an impossible candidate is never chosen
    assert logp.argmax().item() == 0 and expected.argmax().item() == 1


def test_a_low_temperature_makes_expected_jaccard_pick_the_likeliest_span():
    first, last = torch.tensor([[0, 3, 3]]), torch.tensor([[0, 3, 4]])
    logp = torch.tensor([[0.40, 0.35, 0.25]]).log()
    assert expected_jaccard(first, last, logp).argmax().item() == 1  # hedges (the test above)
    assert expected_jaccard(first, last, logp, temperature=0.1).argmax().item() == 0


def test_the_extractor_takes_the_models_temperature_unless_told_one(trained_model_dir):
    loaded = load_model_dir(trained_model_dir)
    assert SpanExtractor(loaded, device="cpu").mbr_temperature == loaded.model.config.span_mbr_temperature
    assert SpanExtractor(loaded, device="cpu", mbr_temperature=0.3).mbr_temperature == 0.3
    with pytest.raises(ValueError, match="temperature must be positive"):
        SpanExtractor(loaded, device="cpu", mbr_temperature=0.0)


def test_expected_jaccard_decoding_stays_in_whole_words_and_batch_invariant(trained_model_dir):
    extractor = SpanExtractor(load_model_dir(trained_model_dir), device="cpu", decoding="expected-jaccard",
                              span_candidates=5, last_candidates=5)
    sentiments = (["negative", "positive", "neutral"] * len(VARIED))[: len(VARIED)]
    for text, sentiment, result in zip(VARIED, sentiments, extractor.extract(VARIED, sentiments)):
        assert_whole_word_span(text, result)
        same_result(result, extractor.extract([text], [sentiment])[0])


def test_unknown_decoding_is_refused(trained_model_dir):
    with pytest.raises(ValueError, match="unknown decoding"):
        SpanExtractor(load_model_dir(trained_model_dir), device="cpu", decoding="beam")


@pytest.mark.parametrize("pointer", ["word", True, None])
def test_pointer_adds_the_encoder_state_of_each_word_and_nothing_else(tokenizer, pointer):
    model = build_model("tiny", tokenizer, seed=3, pointer=pointer).eval()
    codec = Codec(tokenizer)
    words = split_words("so happy to see you again :)", codec.max_words)
    ids = torch.tensor([codec.span_input(words, "positive")])
    mask = torch.ones_like(ids)
    start = torch.full((1, 1), model.config.decoder_start_token_id)
    with torch.inference_mode():
        plain = model(ids, mask, start)[0, 0]
        encoded = encode(model, ids, mask)
        keys = pointer_keys(model, encoded, mask, codec.marker_index[ids] >= 0, ids)
        pointed = span_logits(model, encoded, mask, start, keys)[0, 0]
        hidden = model.decoder.decode(start, encoded, None)[0][0, 0]
    markers = [tokenizer.marker_id(i) for i in range(len(words))]
    others = torch.ones_like(plain, dtype=torch.bool)
    others[markers] = False
    assert torch.allclose(pointed[others], plain[others], atol=1e-5)
    if not pointer:
        assert torch.allclose(pointed, plain, atol=1e-5)
        return
    positions = [(ids[0] == m).nonzero().item() for m in markers]
    if pointer == "word":  # a word's state: the mean over its marker and the pieces up to the next marker
        bounds = positions + [len(ids[0]) - 1]  # eos ends the last word
        states = torch.stack([encoded[0, a:b].mean(0) for a, b in zip(bounds, bounds[1:])])
        assert all(b - a >= 2 for a, b in zip(bounds, bounds[1:]))
    else:
        states = encoded[0, positions]
    content = states @ hidden * model.config.d_model**-0.5
    assert torch.allclose(pointed[markers] - plain[markers], content, atol=1e-4)
    assert content.abs().max() > 1e-3  # the term is really there


def test_joint_start_candidates_score_at_least_as_high_as_greedy(trained_model_dir, trained_extractor):
    """k first-word candidates: never a worse log p(first, last) than greedy, spans still whole words,
    and a padded batch still equals each tweet alone."""
    joint = SpanExtractor(load_model_dir(trained_model_dir), device="cpu", decoding="likeliest", span_candidates=4)
    sentiments = ["negative", "positive", "neutral"] * (len(VARIED) // 3 + 1)
    sentiments = sentiments[: len(VARIED)]
    greedy = SpanExtractor(load_model_dir(trained_model_dir), device="cpu", decoding="likeliest", span_candidates=1,
                           last_candidates=1)
    greedy_results = greedy.extract(VARIED, sentiments)
    joint_results = joint.extract(VARIED, sentiments)
    codec = joint.codec
    for text, sentiment, g, j in zip(VARIED, sentiments, greedy_results, joint_results):
        assert_whole_word_span(text, j)
        same_result(j, joint.extract([text], [sentiment])[0])
        words = codec.words(text)
        if not len(words):
            continue

        def score(result):
            first = next(i for i in range(len(words)) if words.starts[i] == result.start)
            last = next(i for i in range(len(words)) if words.ends[i] == result.end)
            ids = torch.tensor([codec.span_input(words, sentiment)])
            target = torch.tensor([[joint.model.config.decoder_start_token_id, codec.tok.marker_id(first)]])
            with torch.inference_mode():
                encoded = encode(joint.model, ids, torch.ones_like(ids))
                keys = pointer_keys(joint.model, encoded, torch.ones_like(ids), codec.marker_index[ids] >= 0, ids)
                logits = span_logits(joint.model, encoded, torch.ones_like(ids), target, keys)[0].float()  # (2, V)
            mask = torch.full_like(logits, float("-inf"))
            mask[0, [codec.tok.marker_id(i) for i in range(len(words))]] = 0
            mask[1, [codec.tok.marker_id(i) for i in range(first, len(words))]] = 0
            logp = (logits + mask).log_softmax(-1)
            return logp[0, codec.tok.marker_id(first)] + logp[1, codec.tok.marker_id(last)]

        assert score(j) >= score(g) - 1e-4


# ---- the fast two-step decoder against the plain computation ----------------------------------------
def reference_two_markers(extractor: SpanExtractor, batch, n_words: torch.Tensor):
    """The candidates computed the plain way: the whole decoder and the whole vocabulary at each step,
    the encoder output repeated per first-word candidate, the constraint on every vocabulary id."""
    model, codec = extractor.model, extractor.codec
    marker_mask = codec.marker_index[batch.input_ids] >= 0
    encoded = encode(model, batch.input_ids, batch.attention_mask)
    keys = pointer_keys(model, encoded, batch.attention_mask, marker_mask, batch.input_ids)
    start = torch.full((len(n_words), 1), model.config.decoder_start_token_id)
    constraint = WordSpanConstraint(codec.marker_index, n_words, codec.tok.eos_id)
    first_logp = constraint(start, span_logits(model, encoded, batch.attention_mask, start, keys)[:, -1]).log_softmax(-1)
    k = min(extractor.span_candidates, int(n_words.max()))
    top_logp, top_first = first_logp.topk(k, dim=-1)
    decoded = torch.cat([start.repeat_interleave(k, 0), top_first.reshape(-1, 1)], dim=1)
    repeated_keys = tuple(t.repeat_interleave(k, 0) for t in keys) if keys is not None else None
    logits = span_logits(model, encoded.repeat_interleave(k, 0), batch.attention_mask.repeat_interleave(k, 0),
                         decoded, repeated_keys)[:, -1]
    repeated = WordSpanConstraint(codec.marker_index, n_words.repeat_interleave(k), codec.tok.eos_id)
    last_logp, last = repeated(decoded, logits).log_softmax(-1).topk(min(extractor.last_candidates,
                                                                         int(n_words.max())), dim=-1)
    joint = (top_logp.reshape(-1, 1) + last_logp).view(len(n_words), -1)
    first_ids = top_first[:, :, None].expand(-1, -1, last_logp.shape[1]).reshape(len(n_words), -1)
    return codec.marker_index[first_ids].clamp_min(0), codec.marker_index[last.view(len(n_words), -1)].clamp_min(0), joint


@pytest.mark.parametrize("pointer", ["trained", "word", True, None])
def test_the_cached_marker_only_decoder_gives_the_plain_computations_candidates(pointer, trained_model_dir, tokenizer):
    if pointer == "trained":
        extractor = SpanExtractor(load_model_dir(trained_model_dir), device="cpu", precision="float32")
    else:
        from span_jobs.model import LoadedModel, ModelMetadata

        model = build_model("tiny", tokenizer, seed=3, pointer=pointer)
        extractor = SpanExtractor(LoadedModel(model, tokenizer, ModelMetadata(version="t", created_at="", preset="tiny")),
                                  device="cpu", precision="float32")
    codec = extractor.codec
    texts = ["i love this day so much", "ugh", LONG, "so sad today", "work work work and more work tomorrow"]
    words = [codec.words(t) for t in texts]
    batch = codec.pad([codec.span_input(w, s) for w, s in zip(words, ["positive", "negative", "negative",
                                                                       "neutral", "negative"])])
    n_words = torch.tensor([len(w) for w in words])
    with torch.inference_mode():
        fast = extractor._decode_two_markers(batch, n_words)
        plain = reference_two_markers(extractor, batch, n_words)
    finite = torch.isfinite(plain[2])
    assert torch.equal(torch.isfinite(fast[2]), finite)  # the same impossible pairs
    assert torch.allclose(fast[2][finite], plain[2][finite], atol=1e-4)
    assert torch.equal(fast[0][finite], plain[0][finite]) and torch.equal(fast[1][finite], plain[1][finite])


def test_expected_jaccard_over_the_likeliest_reference_scores_every_candidate_against_those_alone():
    from span_jobs.extract import pair_jaccard

    torch.manual_seed(0)
    first = torch.randint(0, 10, (3, 20))
    last = first + torch.randint(0, 5, (3, 20))
    logp = torch.randn(3, 20) * 2
    assert torch.allclose(expected_jaccard(first, last, logp, reference=20), expected_jaccard(first, last, logp))
    pruned = expected_jaccard(first, last, logp, reference=5)
    assert pruned.shape == (3, 20)
    for row in range(3):
        kept = logp[row].topk(5).indices
        weight = logp[row, kept].softmax(-1)
        by_hand = pair_jaccard(first[row:row + 1], last[row:row + 1], first[row:row + 1, kept],
                               last[row:row + 1, kept])[0] @ weight
        assert torch.allclose(pruned[row], by_hand, atol=1e-6)


def int64_expected_jaccard(first, last, logp, temperature, reference):
    """The way it was computed before the fp32 chunks: int64 overlaps, the reference by weight at each temperature."""
    possible, first = torch.isfinite(logp), first.clamp_min(0)
    weight = (logp / temperature).softmax(-1)
    if reference is not None and reference < weight.shape[1]:
        weight, kept = weight.topk(reference, dim=-1)
        ref_first, ref_last, weight = first.gather(1, kept), last.gather(1, kept), weight / weight.sum(-1, keepdim=True)
    else:
        ref_first, ref_last = first, last
    last_a, last_b = torch.maximum(last, first), torch.maximum(ref_last, ref_first)
    overlap = (torch.minimum(last_a[:, :, None], last_b[:, None, :])
               - torch.maximum(first[:, :, None], ref_first[:, None, :]) + 1).clamp_min(0).float()
    length_a, length_b = (last_a - first + 1).float(), (last_b - ref_first + 1).float()
    jaccard = overlap / (length_a[:, :, None] + length_b[:, None, :] - overlap)
    return (jaccard @ weight[:, :, None]).squeeze(-1).masked_fill(~possible, float("-inf"))


def test_expected_jaccard_at_several_temperatures_is_each_temperatures_own_to_the_bit():
    torch.manual_seed(1)
    first = torch.randint(0, 12, (5, 30))
    last = first + torch.randint(-1, 6, (5, 30))  # some last words before their first: the first word alone
    logp = (torch.randn(5, 30) * 3).log_softmax(-1)
    logp[0, 7:] = float("-inf")  # a short tweet: impossible candidates, fewer than the reference count
    for reference in (None, 10):
        both = expected_jaccard_at(first, last, logp, (0.6, 1.0), reference)
        for t, got in zip((0.6, 1.0), both):
            assert torch.equal(got, int64_expected_jaccard(first, last, logp, t, reference))
            assert torch.equal(got, expected_jaccard(first, last, logp, t, reference))
    # by hand at temperature 1 over all candidates: the probability-weighted Jaccard with each other span
    weight = logp[1].softmax(-1).tolist()
    spans = [set(range(f, max(f, l) + 1)) for f, l in zip(first[1].tolist(), last[1].tolist())]
    by_hand = [sum(w * len(a & b) / len(a | b) for w, b in zip(weight, spans)) for a in spans]
    assert expected_jaccard(first, last, logp)[1].tolist() == pytest.approx(by_hand, abs=1e-6)


def test_choose_span_in_chunks_chooses_as_one_chunk():
    torch.manual_seed(2)
    first = torch.randint(0, 20, (150, 144))
    candidates = SpanCandidates(first, first + torch.randint(0, 8, (150, 144)), torch.randn(150, 144).log_softmax(-1))
    whole = choose_span(candidates, 0.6, confidence_temperature=1.0, rows_per_chunk=150, reference=48)
    assert choose_span(candidates, 0.6, confidence_temperature=1.0, rows_per_chunk=64, reference=48) == whole
    # one temperature for both: the confidence is the decoding's own expected Jaccard
    same = choose_span(candidates, 0.6, reference=48)
    for row in (0, 99):
        one = candidates.rows(slice(row, row + 1))
        assert same[2][row] == pytest.approx(expected_jaccard(one.first, one.last, one.logp, 0.6, 48).max().item())


# ---- precision ------------------------------------------------------------------------------------
def test_auto_precision_is_bf16_on_gpus_and_on_cpus_with_native_bf16_only():
    from span_jobs.extract import has_native_bf16, pick_dtype

    cpu = torch.device("cpu")
    assert pick_dtype("auto", cpu) == (torch.bfloat16 if has_native_bf16() else torch.float32)
    assert pick_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert pick_dtype("float32", torch.device("cuda")) == torch.float32
    assert pick_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        pick_dtype("float16", cpu)


def test_bf16_inference_gives_whole_word_spans_close_to_fp32(trained_model_dir, trained_extractor):
    bf16 = SpanExtractor(load_model_dir(trained_model_dir), device="cpu", precision="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    texts = VARIED * 3
    for sentiments in (None, ["positive"] * len(texts)):
        fast, exact = bf16.extract(texts, sentiments), trained_extractor.extract(texts, sentiments)
        for text, a in zip(texts, fast):
            assert_whole_word_span(text, a)
            assert 0.0 <= a.span_confidence <= 1.0
        agree = sum((a.span, a.sentiment) == (b.span, b.sentiment) for a, b in zip(fast, exact)) / len(texts)
        assert agree >= 0.8, agree
        for a, b in zip(fast, exact):
            if b.sentiment_prob is not None and a.sentiment == b.sentiment:
                assert a.sentiment_prob == pytest.approx(b.sentiment_prob, abs=0.03)


def test_a_memo_runs_the_model_once_per_tweet_and_label_and_changes_no_result(trained_model_dir, trained_extractor):
    memo = OutputMemo()
    remembering = SpanExtractor(load_model_dir(trained_model_dir), device="cpu", precision="float32", memo=memo)
    rows_read = []
    remembering.model.encoder.register_forward_hook(lambda module, args, out: rows_read.append(len(args[0])))
    given = [SENTIMENTS[i % 3] for i in range(len(VARIED))]  # negative, neutral, positive, ...
    for sentiments in (given, None, given, None):
        for a, b in zip(remembering.extract(VARIED, sentiments), trained_extractor.extract(VARIED, sentiments),
                        strict=True):
            same_result(a, b)
            assert a.span_confidence == pytest.approx(b.span_confidence, abs=1e-6)
    # given: 6 rows; end to end: 6 tagged, and 12 polarity rows of which the 4 polar given ones were known
    assert sum(rows_read) == 6 + 6 + 8
    assert len(memo.logits) == 6 and len(memo.candidates) == 6 + 8
    with torch.autocast("cpu", dtype=torch.bfloat16):  # other arithmetic: outputs of their own (GPU validation)
        remembering.extract(VARIED, given)
    assert sum(rows_read) == 6 + 6 + 8 + 6


def test_a_memo_refuses_another_model_or_precision(trained_model_dir):
    loaded = load_model_dir(trained_model_dir)
    memo = OutputMemo()
    SpanExtractor(loaded, device="cpu", precision="float32", memo=memo)
    SpanExtractor(loaded, device="cpu", precision="float32", memo=memo)  # the same weights: shared
    with pytest.raises(ValueError, match="another model"):
        SpanExtractor(load_model_dir(trained_model_dir), device="cpu", precision="float32", memo=memo)
    with pytest.raises(ValueError, match="another model"):
        SpanExtractor(loaded, device="cpu", precision="float32", span_candidates=4, memo=memo)
    with pytest.raises(ValueError, match="another model"):
        SpanExtractor(loaded, device="cpu", precision="bfloat16", memo=memo)
