"""Training: a real (tiny, one-epoch) run writes a complete model directory; bad runs fail loudly."""

import json
import math
import random

import pytest
import torch

from span_jobs.codec import Codec
from span_jobs.data import LabeledData, LabeledTweet, is_validation, read_labeled, split_validation_parts
from span_jobs.model import (METADATA_FILE, WEIGHTS_FILE, build_model, encode, load_model_dir, pointer_keys,
                             span_logits)
from span_jobs.evaluate import evaluate_model, score_predictions
from span_jobs.extract import OutputMemo, SpanExtractor
from span_jobs.train import (MBR_TEMPERATURES, TRAIN_LOG, TrainConfig, TrainingError, choose_mbr_temperature,
                             gold_loss, length_bucketed_batches, make_examples, train, training_split, validate,
                             validation_figures)


def test_training_writes_a_model_directory(trained):
    directory = trained.directory
    assert (directory / WEIGHTS_FILE).exists()
    assert (directory / "config.json").exists()
    assert (directory / "spiece.model").exists()
    assert not [p for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]


def test_training_metadata(trained, trained_data):
    metadata = json.loads((trained.directory / METADATA_FILE).read_text())
    assert metadata["version"] == trained.version
    assert metadata["version"].startswith("tiny-")
    assert metadata["preset"] == "tiny"
    assert metadata["created_at"].endswith("Z")
    assert metadata["data_digest"] == trained_data.digest()
    validation = metadata["validation"]
    assert 0.0 <= validation["jaccard"] <= 1.0
    assert validation["n"] == sum(is_validation(t.tweet_id) for t in trained_data.tweets)
    assert set(validation["per_sentiment"]) <= {"negative", "neutral", "positive"}
    assert 0.0 <= validation["sentiment_accuracy"] <= 1.0  # the sentiment task is on by default
    assert validation["epoch"] == 1
    training = metadata["training"]
    assert training["command"] == "pytest conftest trained fixture"
    assert training["config"]["preset"] == "tiny"
    assert training["config"]["epochs"] == 1
    assert training["config"]["vocab_size"] == 400
    assert "extra_texts" not in training["config"]
    assert training["epochs_run"] == 1
    assert training["seconds"] >= 0
    assert trained.validation == {k: v for k, v in validation.items()}


def test_training_metadata_is_what_the_loader_reports(trained, trained_data):
    loaded = load_model_dir(trained.directory)
    assert loaded.version == trained.version
    assert loaded.metadata.data_digest == trained_data.digest()
    assert loaded.metadata.validation["jaccard"] == trained.validation["jaccard"]


def test_training_log_has_one_record_per_epoch(trained):
    log_path = trained.directory / TRAIN_LOG  # beside the weights it explains
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(records) == 1 == len(trained.history)
    [record] = records
    assert record["epoch"] == 1
    assert record["step"] > 0
    assert math.isfinite(record["train_loss"]) and record["train_loss"] > 0
    # a fresh model's epochs are scored at temperature 1.0, before training picks its own
    assert record["jaccard"] == load_model_dir(trained.directory).metadata.training["mbr_temperatures"]["1.0"]
    assert record == trained.history[0]


def test_training_picks_the_expected_jaccard_temperature_on_the_choice_part(trained, trained_data):
    loaded = load_model_dir(trained.directory)
    tried = {float(t): j for t, j in loaded.metadata.training["mbr_temperatures"].items()}
    assert set(tried) == set(MBR_TEMPERATURES)
    chosen = loaded.model.config.span_mbr_temperature  # saved in config.json
    assert tried[chosen] == max(tried.values())
    assert all(tried[t] < tried[chosen] for t in tried if t > chosen)  # a tie keeps the milder one
    # the validation figure recorded is what the saved model scores, as any extractor loads it
    extractor = SpanExtractor(loaded, device="cpu")
    assert extractor.mbr_temperature == chosen
    tweets = [t for t in trained_data.tweets if is_validation(t.tweet_id)]

    def score(part):
        return score_predictions(part, extractor.extract([t.text for t in part], [t.sentiment for t in part]))

    assert score(tweets)["jaccard"] == pytest.approx(trained.validation["jaccard"])
    choice, report = split_validation_parts(tweets)
    assert choice and report
    assert score(choice)["jaccard"] == pytest.approx(tried[chosen])  # chosen there...
    assert score(report)["jaccard"] == pytest.approx(trained.validation["report_part"]["jaccard"])  # ...quoted here


def test_choosing_the_temperature_from_one_run_of_the_model_scores_as_validation_at_each(trained, trained_data):
    loaded = load_model_dir(trained.directory)
    tweets = [t for t in trained_data.tweets if is_validation(t.tweet_id)][:40]
    tweets.insert(3, LabeledTweet(tweet_id="no-words", text="   ", selected_text="", sentiment="neutral"))
    chosen, scores = choose_mbr_temperature(loaded, tweets, "cpu")
    assert scores == {t: validate(loaded, tweets, "cpu", predict_sentiment=False, mbr_temperature=t)["jaccard"]
                      for t in MBR_TEMPERATURES}
    assert scores[chosen] == max(scores.values())


def test_validation_figures_read_each_tweet_once_per_label_and_score_as_a_plain_extractor(trained, trained_data):
    loaded = load_model_dir(trained.directory)
    tweets = [t for t in trained_data.tweets if is_validation(t.tweet_id)]
    report = split_validation_parts(tweets)[1]
    memo = OutputMemo()
    rows_read = []
    loaded.model.encoder.register_forward_hook(lambda module, args, out: rows_read.append(len(args[0])))
    figures = validation_figures(loaded, tweets, "cpu", memo=memo)
    polar = sum(t.sentiment != "neutral" for t in tweets)
    # sentiment given, then end to end: each tweet tagged once and decoded under both polarities, the given
    # polar labels among them; the report half again: nothing new
    assert sum(rows_read) == len(tweets) + len(tweets) + (2 * len(tweets) - polar)
    plain = SpanExtractor(load_model_dir(trained.directory), device="cpu", precision="float32")
    for part, expected in ((figures, evaluate_model(plain, tweets, predict_sentiment=True)),
                           (figures["report_part"], evaluate_model(plain, report, predict_sentiment=True))):
        assert part["jaccard"] == pytest.approx(expected["jaccard"], abs=1e-9)
        assert part["predicted_sentiment"]["jaccard"] == pytest.approx(expected["predicted_sentiment"]["jaccard"],
                                                                       abs=1e-9)
        assert part["sentiment_accuracy"] == expected["sentiment_accuracy"]
    before = sum(rows_read)
    choose_mbr_temperature(loaded, tweets, "cpu", memo)  # what training chooses next reads nothing again
    assert sum(rows_read) == before


def test_recorded_validation_is_what_the_saved_bf16_weights_score(tmp_path, trained_data):
    """Epochs are validated on fp32 weights; the figures saved are those of the rounded weights."""
    config = TrainConfig(preset="tiny", epochs=1, batch_size=32, vocab_size=400, device="cpu", seed=0,
                         save_dtype="bfloat16")
    result = train(trained_data, tmp_path / "model", config)
    loaded = load_model_dir(tmp_path / "model")
    tweets = [t for t in trained_data.tweets if is_validation(t.tweet_id)]
    extractor = SpanExtractor(loaded, device="cpu")
    figures = score_predictions(tweets, extractor.extract([t.text for t in tweets], [t.sentiment for t in tweets]))
    assert figures["jaccard"] == result.validation["jaccard"] == loaded.metadata.validation["jaccard"]
    assert json.loads((tmp_path / "model" / METADATA_FILE).read_text())["validation"] == result.validation


def test_training_learns_something(trained, trained_data):
    """One epoch on 200 tweets: the trained weights fit the training spans better than the weights training
    started from (build_model with the config's seed). Not the epoch's mean loss against ln(vocab): over
    12 steps that mean moved 5.7-6.5 with the seed alone."""
    loaded = load_model_dir(trained.directory)
    codec = Codec(loaded.tokenizer)
    train_tweets, _ = training_split(trained_data.tweets, TrainConfig(preset="tiny"))
    examples = make_examples(codec, train_tweets, sentiment_task=False)
    inputs = codec.pad([e.input_ids for e in examples])
    labels = codec.pad([e.target_ids for e in examples], pad_value=-100).input_ids

    def loss(model) -> float:
        with torch.no_grad():
            encoded = encode(model.eval(), inputs.input_ids, inputs.attention_mask)
            keys = pointer_keys(model, encoded, inputs.attention_mask, codec.marker_index[inputs.input_ids] >= 0,
                                inputs.input_ids)
            logits = span_logits(model, encoded, inputs.attention_mask, model.shift_right(labels), keys)
            return gold_loss(logits, labels, examples).item()

    start = build_model("tiny", loaded.tokenizer, seed=0)
    assert loss(loaded.model) < loss(start) - 0.3


def test_exploding_learning_rate_raises_training_error(tmp_path, make_rows, save_csv):
    data = read_labeled(save_csv(make_rows(60, seed=5), tmp_path / "l.csv"))
    config = TrainConfig(preset="tiny", epochs=1, batch_size=4, lr=1e30, vocab_size=400, device="cpu")
    out = tmp_path / "nan-model"
    with pytest.raises(TrainingError, match="loss became (nan|inf)"):
        train(data, out, config)
    assert not out.exists()  # nothing half-trained is left to be promoted


def test_no_validation_tweets_raises_training_error(tmp_path, make_rows):
    rows = [r for r in make_rows(40, seed=6) if not is_validation(r["textID"])][:10]
    data = LabeledData([LabeledTweet(r["textID"], r["text"], r["selected_text"], r["sentiment"]) for r in rows], [])
    with pytest.raises(TrainingError, match="validation"):
        train(data, tmp_path / "m", TrainConfig(preset="tiny", epochs=1, vocab_size=400, device="cpu"))


def test_unknown_preset_fails_before_training(tmp_path, make_rows):
    from span_jobs.model import ModelError

    rows = make_rows(60, seed=7)
    data = LabeledData([LabeledTweet(r["textID"], r["text"], r["selected_text"], r["sentiment"]) for r in rows], [])
    with pytest.raises(ModelError, match="unknown preset"):
        train(data, tmp_path / "m", TrainConfig(preset="enormous", epochs=1, vocab_size=400, device="cpu"))
    assert not (tmp_path / "m").exists()


def test_make_examples_targets_the_labelled_words(tokenizer):
    codec = Codec(tokenizer)
    tweets = [
        LabeledTweet("1", "I`m gonna cry now", "onna", "negative"),  # widened to "gonna"
        LabeledTweet("2", "what a great day", "great day", "positive"),
    ]
    examples = make_examples(codec, tweets, sentiment_task=True)
    assert len(examples) == 4
    assert examples[0].target_ids == codec.span_target(1, 1)
    assert examples[1].target_ids == codec.sentiment_target("negative")
    assert examples[2].target_ids == codec.span_target(2, 3)
    assert examples[3].target_ids == [tokenizer.label_ids[2], tokenizer.eos_id]
    assert len(make_examples(codec, tweets, sentiment_task=False)) == 2


def test_length_bucketed_batches_cover_every_example_once():
    rng_lengths = random.Random(0)
    lengths = [rng_lengths.randint(3, 90) for _ in range(1000)]
    batches = length_bucketed_batches(lengths, 16, random.Random(1))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(1 <= len(b) <= 16 for b in batches)
    assert batches == length_bucketed_batches(lengths, 16, random.Random(1))  # seeded
    assert batches != length_bucketed_batches(lengths, 16, random.Random(2))
    # bucketing: padding within a batch is far below what random batches would give
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 15


def test_bf16_autocast_on_cpu_trains_and_saves_fp32_weights(tmp_path, trained_data):
    import torch
    from safetensors import safe_open

    result = train(trained_data, tmp_path / "m", TrainConfig(preset="tiny", epochs=1, batch_size=32, vocab_size=400,
                                                             device="cpu", seed=0, cpu_precision="bfloat16"))
    assert 0.0 <= result.validation["jaccard"] <= 1.0 and result.history[0]["train_loss"] > 0
    with safe_open(str(result.directory / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}


def test_a_distilled_run_trains_teachers_and_student_under_bf16_autocast_on_cpu(tmp_path, trained_data,
                                                                               wordpiece_dir):
    """The default recipe's precision on CPUs with native bf16: span teacher, classifier and student
    (with its teacher-state loss) train under autocast; the weights saved stay fp32."""
    import torch
    from safetensors import safe_open

    from span_jobs.model import ModelMetadata

    config = TrainConfig(preset="tiny", epochs=1, vocab_size=400, device="cpu", distill=True, state_weight=1.0,
                         sentiment_teacher="classifier", teacher_dir=str(wordpiece_dir), cpu_precision="bfloat16")
    result = train(trained_data, tmp_path / "m", config)
    training = ModelMetadata.read(result.directory).training
    assert training["trained_in"] == "bfloat16"
    assert all(0 <= v <= 1 for v in training["teacher_report_part"].values())
    assert 0.0 <= result.validation["jaccard"] <= 1.0 and result.history[0]["train_loss"] > 0
    with safe_open(str(result.directory / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}


def test_auto_cpu_precision_trains_in_bf16_where_the_cpu_has_it_and_an_unknown_one_is_refused(tmp_path,
                                                                                            trained_data):
    from span_jobs.extract import has_native_bf16
    from span_jobs.model import ModelMetadata

    config = TrainConfig(preset="tiny", epochs=1, vocab_size=400, device="cpu", limit=40, cpu_precision="auto")
    result = train(trained_data, tmp_path / "m", config)
    expected = "bfloat16" if has_native_bf16() else "float32"
    assert ModelMetadata.read(result.directory).training["trained_in"] == expected
    with pytest.raises(TrainingError, match="cpu_precision must be one of auto, float32, bfloat16; got 'half'"):
        train(trained_data, tmp_path / "n", TrainConfig(preset="tiny", device="cpu", cpu_precision="half"))


def test_an_unknown_recipe_raises_training_error():
    with pytest.raises(TrainingError, match="unknown recipe 'fastest'; known: default"):
        TrainConfig.from_recipe("fastest")


def test_average_weights_is_the_element_wise_mean():
    import torch

    from span_jobs.train import average_weights

    first = {"w": torch.tensor([1.0, 2.0]), "steps": torch.tensor(3)}
    second = {"w": torch.tensor([3.0, 6.0]), "steps": torch.tensor(5)}
    averaged = average_weights([first, second])
    assert averaged["w"].tolist() == [2.0, 4.0]
    assert averaged["steps"].item() == 5  # not a weight: the latest one's


@pytest.mark.parametrize("seed", [0, 1])  # here seed 0 keeps its best epoch, seed 1 the mean of its last two
def test_checkpoint_averaging_saves_the_candidate_it_reports_as_kept(tmp_path, labeled_csv, trained_data, seed):
    """The best epoch and each mean of the last k epochs are scored on the choice part; the saved weights are
    the best one's, scoring what its record says on both parts (fp32 weights, temperature 1 as in training)."""
    from click.testing import CliRunner

    from span_jobs.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in (
        "train", "--data", labeled_csv, "--out", tmp_path / "model", "--preset", "tiny", "--epochs", 3,
        "--batch-size", 32, "--vocab-size", 400, "--seed", seed, "--average-checkpoints", "--device", "cpu")])
    assert result.exit_code == 0, result.output
    loaded = load_model_dir(tmp_path / "model")
    averages = loaded.metadata.training["checkpoint_averages"]
    candidates = averages["candidates"]
    history = [json.loads(line) for line in (tmp_path / "model" / TRAIN_LOG).read_text().splitlines()]
    best = max(history, key=lambda record: record["jaccard"])  # the first of equals, as training keeps it
    assert set(candidates) == {f"epoch {best['epoch']}", "mean of the last 2 epochs", "mean of the last 3 epochs"}
    assert candidates[f"epoch {best['epoch']}"]["choice_part"] == pytest.approx(best["jaccard"])
    assert averages["kept"] == max(candidates, key=lambda name: candidates[name]["choice_part"])
    if averages["kept"].startswith("mean"):
        assert loaded.metadata.training["averaged_epochs"] == int(averages["kept"].split()[-2])
        assert loaded.metadata.validation["epoch"] == loaded.metadata.training["epochs_run"] == 3
    else:
        assert "averaged_epochs" not in loaded.metadata.training
        assert loaded.metadata.validation["epoch"] == best["epoch"]
    extractor = SpanExtractor(loaded, device="cpu", precision="float32", mbr_temperature=1.0)
    choice, report = split_validation_parts([t for t in trained_data.tweets if is_validation(t.tweet_id)])

    def score(part):
        return score_predictions(part, extractor.extract([t.text for t in part], [t.sentiment for t in part]))

    assert score(choice)["jaccard"] == pytest.approx(candidates[averages["kept"]]["choice_part"])
    assert score(report)["jaccard"] == pytest.approx(candidates[averages["kept"]]["report_part"])


def test_dropout_from_the_command_line_is_recorded_and_set_in_the_saved_model(tmp_path, labeled_csv, train_tiny_cli):
    from click.testing import CliRunner

    from span_jobs.cli import cli

    plain = load_model_dir(train_tiny_cli(tmp_path / "plain"))
    without = load_model_dir(train_tiny_cli(tmp_path / "without", "--dropout", 0))
    assert (plain.metadata.training["config"]["dropout"], plain.model.config.dropout_rate) == (0.1, 0.1)
    assert (without.metadata.training["config"]["dropout"], without.model.config.dropout_rate) == (0, 0)
    plain_weights, without_weights = plain.model.state_dict(), without.model.state_dict()
    assert any(not torch.equal(plain_weights[k], without_weights[k]) for k in plain_weights)  # it reached training
    result = CliRunner().invoke(cli, ["train", "--data", str(labeled_csv), "--out", str(tmp_path / "bad"),
                                      "--dropout", "1"])
    assert result.exit_code != 0 and "--dropout" in result.output
