"""Sentiment rows matching the teacher's word states of the tweet read alone (TrainConfig.sentiment_states)."""

import json

import pytest
import torch

from span_jobs.codec import Codec
from span_jobs.data import LabeledTweet
from span_jobs.model import METADATA_FILE, word_states
from span_jobs.teacher import SoftSpan, SpanTeacher, _by_length, soft_spans, token_counts
from span_jobs.train import make_examples, state_loss, word_starts
from span_jobs.words import split_words

TWEETS = [LabeledTweet("p", "so very happy today :)", "happy", "positive"),
          LabeledTweet("n", "i work", "i work", "neutral"),
          LabeledTweet("s", "sad", "sad", "negative")]
HIDDEN = 6


def _soft(codec: Codec) -> dict[str, SoftSpan]:
    torch.manual_seed(0)
    out = {}
    for t in TWEETS:
        n = len(codec.words(t.text))
        out[t.tweet_id] = SoftSpan(torch.ones(n) / n, torch.ones(n) / n, torch.randn(n, HIDDEN),
                                   torch.tensor([0.2, 0.3, 0.5]), sentiment_states=torch.randn(n, HIDDEN))
    return out


def test_sentiment_word_starts_mark_where_each_words_ids_begin(tokenizer):
    codec = Codec(tokenizer)
    words = codec.words("so very happy today :)")
    ids, starts = codec.sentiment_input(words), codec.sentiment_word_starts(words)
    assert len(starts) == len(words) and starts == sorted(set(starts))
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(ids) - 1  # the last word runs up to eos
        pieces = tokenizer.encode_words([words.unit(i)])[0]
        assert ids[start : start + len(pieces)] == pieces
        assert end - start in (len(pieces), len(pieces) + 1)  # its pieces, and its lexicon piece if it has one
    assert ids[-1] == tokenizer.eos_id


def test_only_with_the_option_do_sentiment_rows_carry_the_teachers_states_of_the_tweet_alone(tokenizer):
    codec = Codec(tokenizer)
    soft = _soft(codec)
    plain = make_examples(codec, TWEETS, sentiment_task=True, soft=soft)
    taught = make_examples(codec, TWEETS, sentiment_task=True, soft=soft, sentiment_states=True)
    for t, (span, sentiment), (span_plain, sentiment_plain) in zip(TWEETS, zip(taught[0::2], taught[1::2]),
                                                                 zip(plain[0::2], plain[1::2])):
        assert span.input_ids == span_plain.input_ids and span.target_ids == span_plain.target_ids
        # span rows are as before: the states read with the sentiment
        assert span.teacher_states is soft[t.tweet_id].states and span.word_starts is None
        assert sentiment_plain.teacher_states is None and sentiment_plain.word_starts is None
        assert sentiment.teacher_states is soft[t.tweet_id].sentiment_states
        assert list(sentiment.word_starts) == codec.sentiment_word_starts(codec.words(t.text))
        assert torch.equal(sentiment.soft_label, soft[t.tweet_id].sentiment)


def test_state_loss_pools_a_sentiment_rows_words_from_their_starts_and_span_rows_from_their_markers(tokenizer):
    codec = Codec(tokenizer)
    soft = _soft(codec)
    examples = make_examples(codec, TWEETS, sentiment_task=True, soft=soft, sentiment_states=True)
    batch = codec.pad([e.input_ids for e in examples])
    marker_mask = codec.marker_index[batch.input_ids] >= 0
    starts = word_starts(marker_mask, examples)
    assert torch.equal(starts[0::2], marker_mask[0::2])  # span rows: their markers, nothing more
    assert word_starts(marker_mask, make_examples(codec, TWEETS, sentiment_task=True, soft=soft)) is marker_mask
    encoded = torch.randn(len(examples), batch.input_ids.shape[1], 5, requires_grad=True)
    projection = torch.nn.Linear(5, HIDDEN)
    pooled, _, present = word_states(encoded, batch.attention_mask, starts, batch.input_ids, tokenizer.eos_id)
    loss = state_loss(pooled, present, examples, projection)

    expected = []
    for row, example in enumerate(examples):
        ids = batch.input_ids[row].tolist()
        if example.word_starts:  # a sentiment row: word i is its ids from its start to the next word's (or eos)
            bounds = list(example.word_starts) + [ids.index(tokenizer.eos_id)]
            spans = [range(a, b) for a, b in zip(bounds, bounds[1:])]
        else:  # a span row: the marker and what follows it up to the next marker (or eos)
            markers = [i for i, x in enumerate(ids) if codec.marker_index[x] >= 0] + [ids.index(tokenizer.eos_id)]
            spans = [range(a, b) for a, b in zip(markers, markers[1:])]
        for word, positions in enumerate(spans):
            student = projection(encoded[row, list(positions)].mean(0))
            expected.append(1 - torch.nn.functional.cosine_similarity(student, example.teacher_states[word], dim=0))
    assert len(expected) == 2 * sum(len(codec.words(t.text)) for t in TWEETS)
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    loss.backward()
    assert all(encoded.grad[row].abs().sum() > 0 for row in range(len(examples)))


def test_the_teacher_gives_the_states_it_read_the_tweet_alone_with_whatever_its_batch(wordpiece_dir):
    teacher = SpanTeacher.pretrained(8, wordpiece_dir).eval()
    tweets = [LabeledTweet("a", "so happy !", "happy", "positive"), LabeledTweet("b", "i hate work", "hate", "negative")]
    both, alone = soft_spans(teacher, tweets), soft_spans(teacher, tweets[1:])
    for t in tweets:
        states = both[t.tweet_id].sentiment_states
        assert states.shape == (3, 24) and states.dtype == torch.float16 and (states.abs().sum(-1) > 0).all()
        assert not torch.allclose(states, both[t.tweet_id].states, atol=1e-2)  # not those read with the sentiment
    assert torch.allclose(both["b"].sentiment_states.float(), alone["b"].sentiment_states.float(), atol=1e-2)
    words = [split_words(tweets[0].text, 8)]
    with torch.inference_mode():
        logits, states, mask = teacher.sentiment_logits_and_states(words)
        assert torch.allclose(logits, teacher.sentiment_logits(words))
    assert torch.allclose(states[0, :3].half().float(), both["a"].sentiment_states.float(), atol=1e-2)
    assert both["a"].sentiment.tolist() == pytest.approx(logits[0].softmax(-1).tolist(), abs=1e-5)


def test_the_teachers_batches_group_tweets_by_tokens_not_characters(wordpiece_dir):
    teacher = SpanTeacher.pretrained(8, wordpiece_dir)
    tweets = [LabeledTweet("long-word", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "a", "neutral"),
              LabeledTweet("many-words", "i a b c d e f", "a", "neutral"),
              LabeledTweet("short", "hi", "hi", "neutral"), LabeledTweet("none", "   ", "", "neutral")]
    words = [split_words(t.text, 8) for t in tweets]
    counts = token_counts(teacher.tokenizer, words)
    for w, count in zip(words, counts):  # as the teacher reads the tweet alone, [CLS] and [SEP] included
        units = [w.unit(i) for i in range(len(w))] or [""]
        assert count == len(teacher.tokenizer([units], is_split_into_words=True)["input_ids"][0])
    assert counts[0] < counts[1]  # more characters, fewer tokens
    batches = _by_length(teacher, tweets, batch_size=3)
    order = [t.tweet_id for batch, _ in batches for t in batch]
    assert sorted(order) == sorted(t.tweet_id for t in tweets)
    assert [counts[[t.tweet_id for t in tweets].index(i)] for i in order] == sorted(counts)
    assert all(len(batch) == len(batch_words) for batch, batch_words in batches)


def test_train_sentiment_states_from_the_command_line_is_recorded_and_changes_the_trained_model(
        tmp_path, train_tiny_cli, wordpiece_dir):
    from safetensors.torch import load_file

    distill = ("--distill", "--teacher-dir", wordpiece_dir)
    plain = load_file(train_tiny_cli(tmp_path / "plain", *distill) / "model.safetensors")
    taught = load_file(train_tiny_cli(tmp_path / "taught", *distill, "--sentiment-states") / "model.safetensors")
    config = json.loads((tmp_path / "taught" / METADATA_FILE).read_text())["training"]["config"]
    assert config["sentiment_states"] is True
    assert json.loads((tmp_path / "plain" / METADATA_FILE).read_text())["training"]["config"]["sentiment_states"] is False
    assert plain.keys() == taught.keys() and any(not torch.equal(plain[k], taught[k]) for k in plain)
