"""Row weights in training (TrainConfig.polar_weight, sentiment_weight): where they apply, and what they leave."""

import json

import pytest
import torch

from span_jobs.codec import Codec
from span_jobs.data import LabeledTweet
from span_jobs.teacher import SoftSpan
from span_jobs.tokenizer import N_SENTINELS
from span_jobs.train import distillation_loss, gold_loss, make_examples

TWEETS = [LabeledTweet("p", "so very happy today", "happy", "positive"),
          LabeledTweet("n", "just another day", "just another day", "neutral"),
          LabeledTweet("s", "this is sad", "sad", "negative")]


def test_polar_weight_lands_on_positive_and_negative_span_rows_only(tokenizer):
    examples = make_examples(Codec(tokenizer), TWEETS, sentiment_task=True, polar_weight=2.0)
    span_rows, sentiment_rows = examples[0::2], examples[1::2]
    assert [e.weight for e in span_rows] == [2.0, 1.0, 2.0]
    assert [e.weight for e in sentiment_rows] == [1.0, 1.0, 1.0]
    assert all(e.weight == 1.0 for e in make_examples(Codec(tokenizer), TWEETS, sentiment_task=True))


def test_sentiment_weight_lands_on_sentiment_rows_only(tokenizer):
    examples = make_examples(Codec(tokenizer), TWEETS, sentiment_task=True, polar_weight=2.0, sentiment_weight=3.0)
    assert [e.weight for e in examples] == [2.0, 3.0, 1.0, 3.0, 2.0, 3.0]


def _padded(codec, examples):
    return codec.pad([e.target_ids for e in examples], pad_value=-100).input_ids


def test_gold_loss_is_the_plain_token_mean_at_weight_one_and_weighs_rows_by_their_weight(tokenizer):
    codec = Codec(tokenizer)
    plain = make_examples(codec, TWEETS, sentiment_task=True)
    weighted = make_examples(codec, TWEETS, sentiment_task=True, polar_weight=3.0)
    labels = _padded(codec, plain)
    torch.manual_seed(0)
    logits = torch.randn(len(plain), labels.shape[1], tokenizer.vocab_size)
    mean = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert gold_loss(logits, labels, plain).item() == pytest.approx(mean.item(), rel=1e-6)

    per_row = [torch.nn.functional.cross_entropy(logits[i], labels[i], ignore_index=-100, reduction="sum")
               for i in range(len(plain))]
    tokens = (labels != -100).sum(-1)
    w = torch.tensor([e.weight for e in weighted])
    expected = (torch.stack(per_row) * w).sum() / (tokens * w).sum()
    assert gold_loss(logits, labels, weighted).item() == pytest.approx(expected.item(), rel=1e-6)
    assert gold_loss(logits, labels, weighted).item() != pytest.approx(mean.item(), rel=1e-3)


def test_distillation_loss_averages_rows_by_their_weight(tokenizer):
    codec = Codec(tokenizer)
    soft = {t.tweet_id: SoftSpan(first=torch.full((len(codec.words(t.text)),), 1 / len(codec.words(t.text))),
                                 last=torch.full((len(codec.words(t.text)),), 1 / len(codec.words(t.text))),
                                 sentiment=torch.tensor([0.2, 0.3, 0.5])) for t in TWEETS}
    examples = make_examples(codec, TWEETS, sentiment_task=True, soft=soft, polar_weight=2.0)
    marker_ids = torch.tensor([tokenizer.marker_id(i) for i in range(N_SENTINELS)])
    label_ids = torch.tensor(tokenizer.label_ids)
    torch.manual_seed(0)
    logits = torch.randn(len(examples), 3, tokenizer.vocab_size)
    each = [distillation_loss(logits[i : i + 1], [e], marker_ids, label_ids).item() for i, e in enumerate(examples)]
    weights = [e.weight for e in examples]
    expected = sum(w * loss for w, loss in zip(weights, each)) / sum(weights)
    assert distillation_loss(logits, examples, marker_ids, label_ids).item() == pytest.approx(expected, rel=1e-5)


def test_train_row_weights_from_the_command_line_are_recorded_and_change_the_trained_model(tmp_path, train_tiny_cli):
    from safetensors.torch import load_file

    from span_jobs.model import METADATA_FILE

    def trained(out, *extra):
        return load_file(train_tiny_cli(out, *extra) / "model.safetensors")

    plain = trained(tmp_path / "plain")
    weighted = trained(tmp_path / "weighted", "--polar-weight", 2, "--sentiment-weight", 1.5)
    config = json.loads((tmp_path / "weighted" / METADATA_FILE).read_text())["training"]["config"]
    assert (config["polar_weight"], config["sentiment_weight"]) == (2, 1.5)
    config = json.loads((tmp_path / "plain" / METADATA_FILE).read_text())["training"]["config"]
    assert (config["polar_weight"], config["sentiment_weight"]) == (1, 1)
    again = trained(tmp_path / "again")
    assert all(torch.equal(plain[k], again[k]) for k in plain)  # so the difference below is the weight's
    assert plain.keys() == weighted.keys()
    assert any(not torch.equal(plain[k], weighted[k]) for k in plain)
