"""Distillation targets and loss: the student's marker distributions against a teacher's."""

import math

import pytest
import torch

from span_jobs.codec import Codec
from span_jobs.data import LabeledTweet
from span_jobs.teacher import SoftSpan
from span_jobs.tokenizer import N_SENTINELS
from span_jobs.train import distillation_loss, make_examples


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
