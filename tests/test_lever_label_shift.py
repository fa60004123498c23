"""The extra-spaces label shift ("the magic"): where labels put a span, and the span they meant."""

import pytest

from span_jobs.codec import Codec
from span_jobs.data import LabeledTweet
from span_jobs.train import make_examples
from span_jobs.words import extra_spaces_before, labeled_offsets, repair_selection

# real labels of the training data: two extra spaces before "adore" cut the label to "y adore"
HEY_MIA = " hey mia!  totally adore your music.  when will your cd be out?"


def test_extra_spaces_count_leading_whitespace_and_repeats_inside_runs():
    assert extra_spaces_before("a b", 2) == 0
    assert extra_spaces_before(" a b", 3) == 1
    assert extra_spaces_before("a   b", 4) == 2
    assert extra_spaces_before(HEY_MIA, HEY_MIA.index("adore")) == 2


def test_labeled_offsets_shift_a_span_after_two_extra_spaces_as_the_labels_do():
    start = HEY_MIA.index("adore")
    shifted = labeled_offsets(HEY_MIA, start, start + len("adore"))
    assert HEY_MIA[slice(*shifted)] == "y adore"


def test_labeled_offsets_leave_a_span_after_one_extra_space_alone():
    text = " so happy today"
    start = text.index("happy")
    assert labeled_offsets(text, start, start + 5) == (start, start + 5)


def test_labeled_offsets_cut_the_end_past_two_extra_spaces():
    text = "   so not close enough  that I could run"
    start, end = text.index("so"), text.index("enough") + len("enough")
    s, e = labeled_offsets(text, start, end)
    assert (s, e) == (start - 3, end - 1)


@pytest.mark.parametrize("text, label, meant", [
    (HEY_MIA, "y adore", "adore"),
    ("  He`s awesome... Have you worked with him before?", "s awesome", "awesome"),
    (" Haha I know, I cant handle the fame!  and thank you!", "d thank you!", "thank you!"),
])
def test_repair_selection_moves_a_shifted_label_back_onto_whole_words(text, label, meant):
    assert repair_selection(text, label) == meant
    start = text.index(meant)
    assert text[slice(*labeled_offsets(text, start, start + len(meant)))] == label  # and back


@pytest.mark.parametrize("text, label", [
    ("  I was watching Parental Control", "I was watching Parental Control"),  # on word boundaries
    ("my boss is bullying me...", "bullying me"),  # cut, but not by spaces
    ("so sad", "not in the text"),
    ("so sad", "   "),
])
def test_repair_selection_keeps_other_labels(text, label):
    assert repair_selection(text, label) == label


def test_make_examples_can_target_the_repaired_span(tokenizer):
    codec = Codec(tokenizer)
    tweet = LabeledTweet("t1", HEY_MIA, "y adore", "positive")
    words = codec.words(HEY_MIA)
    adore = [words.unit(i) for i in range(len(words))].index("adore")
    plain, = make_examples(codec, [tweet], sentiment_task=False)
    repaired, = make_examples(codec, [tweet], sentiment_task=False, repair_labels=True)
    assert repaired.target_ids == codec.span_target(adore, adore)
    assert plain.target_ids == codec.span_target(adore - 1, adore)  # "totally adore": the cut word widened


# double spaces everywhere: every word of these tweets sits after two or more extra spaces
SPACED = ["  " + "  ".join(f"word{i} w{i} x{j}" for i in range(5)) for j in range(24)]


@pytest.fixture(scope="module")
def untrained(tiny_model_dir):
    from span_jobs.model import load_model_dir

    return load_model_dir(tiny_model_dir)


def test_the_extractor_places_spans_as_the_labels_do_where_the_model_says_so(untrained):
    from span_jobs.extract import SpanExtractor

    sentiments = ["positive", "negative", "neutral", None] * (len(SPACED) // 4)
    plain = SpanExtractor(untrained, device="cpu", precision="float32").extract(SPACED, sentiments)
    untrained.model.config.span_label_shift = True
    try:
        shifted = SpanExtractor(untrained, device="cpu", precision="float32").extract(SPACED, sentiments)
    finally:
        del untrained.model.config.span_label_shift
    for text, p, s in zip(SPACED, plain, shifted):
        assert (s.start, s.end) == labeled_offsets(text, p.start, p.end) and s.span == text[s.start:s.end]
        assert (s.sentiment, s.sentiment_prob, s.span_confidence) == (p.sentiment, p.sentiment_prob, p.span_confidence)
    assert sum(s.span != p.span for s, p in zip(shifted, plain)) > len(SPACED) // 2


@pytest.mark.parametrize("labels_shifted", [True, False])
def test_calibration_keeps_the_shift_only_where_the_labels_have_it(untrained, labels_shifted):
    """Gold spans made from the model's own choices, shifted or not: the fit must tell which."""
    from span_jobs.calibration import fit_decision
    from span_jobs.extract import SpanExtractor

    extractor = SpanExtractor(untrained, device="cpu", precision="float32")
    sentiments = ["positive", "negative", "neutral"] * (len(SPACED) // 3)
    chosen = extractor.extract(SPACED, sentiments)
    gold = [text[slice(*labeled_offsets(text, r.start, r.end))] if labels_shifted else r.span
            for text, r in zip(SPACED, chosen)]
    if labels_shifted:  # else the test could not tell the two apart
        assert any(g.split() != r.span.split() for g, r in zip(gold, chosen))
    tweets = [LabeledTweet(f"s{i}", text, g, s) for i, (text, g, s) in enumerate(zip(SPACED, gold, sentiments))]
    config, figures = fit_decision(extractor, tweets)
    assert config["span_label_shift"] is labels_shifted
    given = figures["label_shift"]["given_jaccard"]
    assert given["shifted" if labels_shifted else "plain"] == pytest.approx(1.0)


def test_train_repair_labels_from_the_command_line_is_recorded_with_the_shift_decision(tmp_path, labeled_csv):
    import json

    from click.testing import CliRunner

    from span_jobs.cli import cli
    from span_jobs.model import METADATA_FILE

    out = tmp_path / "model"
    result = CliRunner().invoke(cli, [str(a) for a in (
        "train", "--data", labeled_csv, "--out", out, "--preset", "tiny", "--epochs", 1, "--limit", 120,
        "--vocab-size", 400, "--repair-labels", "--device", "cpu")])
    assert result.exit_code == 0, result.output
    training = json.loads((out / METADATA_FILE).read_text())["training"]
    assert training["config"]["repair_labels"] is True
    decision = training["calibration"]["choice_part"]["label_shift"]["given_jaccard"]
    shift = json.loads((out / "config.json").read_text())["span_label_shift"]
    assert shift is (decision["shifted"] > decision["plain"])
