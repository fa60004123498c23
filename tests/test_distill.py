"""Distillation targets and loss: the student's marker distributions against a teacher's."""

import math

import pytest
import torch

from span_jobs.codec import Codec
from span_jobs.data import LabeledTweet
from span_jobs.model import word_states
from span_jobs.teacher import SoftSpan
from span_jobs.tokenizer import N_SENTINELS
from span_jobs.train import distillation_loss, make_examples, state_loss


def test_soft_targets_cover_only_the_tweets_words_and_last_after_gold_first(tokenizer):
    codec = Codec(tokenizer)
    tweet = LabeledTweet("t1", "so very happy today", "happy today", "positive")
    soft = {"t1": SoftSpan(first=torch.tensor([0.1, 0.2, 0.6, 0.1]), last=torch.tensor([0.4, 0.1, 0.2, 0.3]))}
    span_example, sentiment_example = make_examples(codec, [tweet], sentiment_task=True, soft=soft)
    assert sentiment_example.soft_first is None
    assert span_example.soft_first.shape == (N_SENTINELS,)
    assert span_example.soft_first[:4].tolist() == pytest.approx([0.1, 0.2, 0.6, 0.1])
    assert span_example.soft_first[4:].sum() == 0
    # gold first word is 2 ("happy"): the last-word target keeps words 2..3, renormalised
    assert span_example.soft_last[:4].tolist() == pytest.approx([0, 0, 0.4, 0.6])


def test_distillation_loss_is_the_cross_entropy_over_allowed_markers(tokenizer):
    codec = Codec(tokenizer)
    tweet = LabeledTweet("t1", "so very happy today", "happy today", "positive")
    soft = {"t1": SoftSpan(first=torch.tensor([0.1, 0.2, 0.6, 0.1]), last=torch.tensor([0.4, 0.1, 0.2, 0.3]))}
    examples = make_examples(codec, [tweet], sentiment_task=True, soft=soft)
    marker_ids = torch.tensor([tokenizer.marker_id(i) for i in range(N_SENTINELS)])
    logits = torch.randn(2, 3, tokenizer.vocab_size, requires_grad=True)
    loss = distillation_loss(logits, examples, marker_ids)

    step0 = logits[0, 0, marker_ids[:4]].log_softmax(-1)
    step1 = logits[0, 1, marker_ids[2:4]].log_softmax(-1)
    expected = -((torch.tensor([0.1, 0.2, 0.6, 0.1]) * step0).sum() + (torch.tensor([0.4, 0.6]) * step1).sum()) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert math.isfinite(logits.grad.abs().sum().item())
    assert logits.grad[1].abs().sum() == 0  # the sentiment example has no teacher target
    assert distillation_loss(logits, examples[1:], marker_ids) is None


def test_state_loss_matches_each_words_pooled_state_with_the_teachers_state_of_that_word(tokenizer):
    codec = Codec(tokenizer)
    tweets = [LabeledTweet("t1", "so very happy today", "happy today", "positive"),
              LabeledTweet("t2", "sad", "sad", "negative")]
    hidden = 6
    states = {"t1": torch.randn(4, hidden), "t2": torch.randn(1, hidden)}
    states["t1"][3] = 0  # a word the teacher did not see (past its token limit)
    soft = {t: SoftSpan(torch.ones(len(s)) / len(s), torch.ones(len(s)) / len(s), s) for t, s in states.items()}
    examples = make_examples(codec, tweets, sentiment_task=True, soft=soft)
    batch = codec.pad([e.input_ids for e in examples])
    d_model = 5
    encoded = torch.randn(len(examples), batch.input_ids.shape[1], d_model, requires_grad=True)
    projection = torch.nn.Linear(d_model, hidden)
    pooled, _, present = word_states(encoded, batch.attention_mask, codec.marker_index[batch.input_ids] >= 0,
                                     batch.input_ids, tokenizer.eos_id)
    loss = state_loss(pooled, present, examples, projection)

    expected = []
    for row, tweet in [(0, "t1"), (2, "t2")]:  # rows 1 and 3 are sentiment examples: no markers, no states
        ids = batch.input_ids[row].tolist()
        for word in range(len(states[tweet])):
            if states[tweet][word].abs().sum() == 0:
                continue
            student = projection(encoded[row, word_positions(ids, word, tokenizer)].mean(0))
            expected.append(1 - torch.nn.functional.cosine_similarity(student, states[tweet][word], dim=0))
    assert len(expected) == 4
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    loss.backward()
    assert encoded.grad[1].abs().sum() == 0 and encoded.grad[0].abs().sum() > 0
    assert state_loss(pooled, present, examples[1:2], projection) is None


def word_positions(ids: list[int], word: int, tokenizer) -> list[int]:
    """Positions of a word's marker and of everything up to the next marker or eos, read off the ids."""
    start = ids.index(tokenizer.marker_id(word))
    end = start + 1
    while ids[end] != tokenizer.eos_id and ids[end] != tokenizer.marker_id(word + 1):
        end += 1
    return list(range(start, end))


def test_word_states_pool_each_words_positions_and_name_its_marker(tokenizer):
    codec = Codec(tokenizer)
    rows = [codec.span_input(codec.words("so very happy today :)"), "positive"),
            codec.span_input(codec.words("ugh"), "negative"), codec.sentiment_input(codec.words("fine"))]
    batch = codec.pad(rows)
    encoded = torch.randn(3, batch.input_ids.shape[1], 4)
    pooled, marker_ids, present = word_states(encoded, batch.attention_mask, codec.marker_index[batch.input_ids] >= 0,
                                              batch.input_ids, tokenizer.eos_id)
    assert present.tolist() == [[True] * 5, [True] + [False] * 4, [False] * 5]
    for row, n_words in [(0, 5), (1, 1)]:
        ids = batch.input_ids[row].tolist()
        for word in range(n_words):
            positions = word_positions(ids, word, tokenizer)
            assert len(positions) >= 2  # the marker and at least one piece
            assert torch.allclose(pooled[row, word], encoded[row, positions].mean(0), atol=1e-6)
            assert marker_ids[row, word] == tokenizer.marker_id(word)


def test_sentiment_rows_learn_the_teachers_label_distribution(tokenizer):
    codec = Codec(tokenizer)
    tweet = LabeledTweet("t1", "so very happy today", "happy today", "positive")
    label_probs = torch.tensor([0.1, 0.2, 0.7])  # negative, neutral, positive
    soft = {"t1": SoftSpan(torch.ones(4) / 4, torch.ones(4) / 4, None, label_probs)}
    span_example, sentiment_example = make_examples(codec, [tweet], sentiment_task=True, soft=soft)
    assert span_example.soft_label is None and torch.equal(sentiment_example.soft_label, label_probs)
    marker_ids = torch.tensor([tokenizer.marker_id(i) for i in range(N_SENTINELS)])
    label_ids = torch.tensor(tokenizer.label_ids)
    logits = torch.randn(2, 3, tokenizer.vocab_size, requires_grad=True)
    loss = distillation_loss(logits, [sentiment_example], marker_ids, label_ids)
    expected = -(label_probs * logits[0, 0, label_ids].log_softmax(-1)).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    both = distillation_loss(logits, [span_example, sentiment_example], marker_ids, label_ids)
    span_only = distillation_loss(logits, [span_example], marker_ids, label_ids)
    sentiment_only = distillation_loss(logits[1:], [sentiment_example], marker_ids, label_ids)
    assert both.item() == pytest.approx((span_only.item() + sentiment_only.item()) / 2, rel=1e-5)
