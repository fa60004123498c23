"""The `span-jobs` core commands (train, evaluate, predict): outputs, error lines, docs."""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from flows.cli import cli  # the command as installed
from span_jobs.calibration import CONFIG_KEYS
from span_jobs.data import SENTIMENTS, is_validation, validation_part
from span_jobs.model import METADATA_FILE
from span_jobs.registry import Registry

PREDICTION_COLUMNS = {"sentiment", "sentiment_prob", "span", "span_start", "span_end", "span_confidence", "model_version"}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    """Exit status 1, nothing on stdout, and exactly one `Error: ...` line naming the fragments."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), f"uncaught {result.exception!r}"
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def one_json_object(stdout):
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, stdout
    figures = json.loads(lines[0])
    assert isinstance(figures, dict)
    return figures


@pytest.fixture(scope="module")
def cli_trained(tmp_path_factory, labeled_csv):
    """`span-jobs train` on the generated labeled CSV: (model dir, parsed stdout)."""
    out = tmp_path_factory.mktemp("cli") / "model"
    result = invoke("train", "--data", labeled_csv, "--out", out, "--preset", "tiny", "--epochs", 1,
                    "--limit", 80, "--batch-size", 32, "--vocab-size", 400, "--device", "cpu")
    assert result.exit_code == 0, result.output
    return out, one_json_object(result.stdout)


@pytest.fixture(scope="module")
def labeled_frame(labeled_csv):
    return pd.read_csv(labeled_csv, dtype=str, keep_default_na=False)


# ---- train -----------------------------------------------------------------------------------
def test_train_prints_one_json_object_and_writes_the_model(cli_trained, labeled_frame):
    out, printed = cli_trained
    assert printed["model"] == str(out)
    metadata = json.loads((out / METADATA_FILE).read_text())
    assert printed["version"] == metadata["version"]
    assert 0.0 <= printed["jaccard"] <= 1.0
    # --limit 80 keeps at most 80 // 5 validation tweets
    n_validation = sum(is_validation(i) for i in labeled_frame["textID"])
    assert printed["n"] == metadata["validation"]["n"] == min(n_validation, 80 // 5)
    assert metadata["training"]["config"]["limit"] == 80
    assert metadata["training"]["config"]["preset"] == "tiny"
    assert metadata["training"]["command"].startswith("span-jobs")


def test_train_with_a_recipe_takes_its_settings_where_no_option_is_given(tmp_path, labeled_csv, wordpiece_dir):
    """--recipe default trains as the shipped model was (distilled, MiniLM embeddings, bf16 weights);
    the options given on the command line win over it."""
    from span_jobs.train import RECIPES

    out = tmp_path / "model"
    result = invoke("train", "--recipe", "default", "--data", labeled_csv, "--out", out, "--preset", "tiny",
                    "--epochs", 1, "--limit", 80, "--vocab-size", 400, "--teacher-dir", wordpiece_dir,
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    config = json.loads((out / METADATA_FILE).read_text())["training"]["config"]
    assert config["preset"] == "tiny" and config["epochs"] == 1 and config["teacher_dir"] == str(wordpiece_dir)
    recipe = {k: v for k, v in RECIPES["default"].items() if k not in ("preset", "epochs")}
    assert recipe["distill"] and {k: config[k] for k in recipe} == recipe
    assert config["batch_size"] == 64 and config["lr"] == 1e-3  # neither given nor in the recipe: the defaults


def test_an_unknown_recipe_is_a_usage_error(tmp_path, labeled_csv):
    from span_jobs.train import RECIPES

    result = invoke("train", "--recipe", "fastest", "--data", labeled_csv, "--out", tmp_path / "m")
    assert result.exit_code == 2 and "fastest" in result.output
    for command in ("train", "retrain"):  # the choices offered are the recipes there are
        option = next(p for p in cli.commands[command].params if p.name == "recipe")
        assert list(option.type.choices) == list(RECIPES)


def test_train_refuses_to_replace_a_folder_of_the_users_own_files(tmp_path, labeled_csv):
    out = tmp_path / "my-documents"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    result = invoke("train", "--data", labeled_csv, "--out", out, "--preset", "tiny", "--epochs", 1,
                    "--limit", 30, "--vocab-size", 400, "--device", "cpu")
    assert_one_line_error(result, str(out), "not a span-jobs model directory")
    assert [p.name for p in out.iterdir()] == ["thesis.txt"]
    assert (out / "thesis.txt").read_text() == "years of work"


def test_saving_over_a_model_directory_with_the_users_files_in_it_is_refused(cli_trained, tmp_path):
    import shutil

    from span_jobs.errors import ModelError
    from span_jobs.model import load_model_dir, save_model

    out, _ = cli_trained
    copy = tmp_path / "model"
    shutil.copytree(out, copy)
    (copy / "notes.md").write_text("mine")
    with pytest.raises(ModelError, match="notes.md"):
        save_model(load_model_dir(copy), copy)
    assert (copy / "notes.md").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    (copy / "notes.md").unlink()
    save_model(load_model_dir(copy), copy)  # our own files only: replaced, atomically
    assert load_model_dir(copy).version == load_model_dir(out).version


def test_calibrate_writes_the_fit_into_the_model_directory(cli_trained, labeled_csv, tmp_path):
    import shutil

    out, _ = cli_trained
    from span_jobs.data import read_labeled, select_split
    from span_jobs.model import load_model_dir
    from span_jobs.train import validation_figures

    copy = tmp_path / "model"
    shutil.copytree(out, copy)
    weights = (copy / "model.safetensors").read_bytes()
    metadata = json.loads((copy / METADATA_FILE).read_text())
    metadata["validation"].update(jaccard=-1.0, report_part={"jaccard": -1.0})  # figures of an older fit
    (copy / METADATA_FILE).write_text(json.dumps(metadata))
    result = invoke("calibrate", "--model", copy, "--data", labeled_csv, "--device", "cpu")
    assert result.exit_code == 0, result.output
    summary = one_json_object(result.stdout)
    config = json.loads((copy / "config.json").read_text())
    for key in CONFIG_KEYS:
        assert config[key] == summary[key]
    metadata = json.loads((copy / METADATA_FILE).read_text())
    assert metadata["training"]["calibration"] == summary
    # the validation figures are the calibrated model's, as train would have recorded them
    validation = select_split(read_labeled(labeled_csv).tweets, "validation")
    assert metadata["validation"] == {**metadata["validation"],
                                      **validation_figures(load_model_dir(copy), validation, "cpu")}
    assert metadata["validation"]["epoch"] >= 1  # what train recorded beside them stays
    assert summary["report_part"]["n"] > 0 and summary["choice_part"]["n"] > 0
    assert (copy / "model.safetensors").read_bytes() == weights  # only the two JSON files change


def test_train_without_validation_tweets_is_one_error_line(tmp_path, make_rows, save_csv):
    rows = [r for r in make_rows(60, seed=8) if not is_validation(r["textID"])][:12]
    path = save_csv(rows, tmp_path / "train-only.csv")
    result = invoke("train", "--data", path, "--out", tmp_path / "m", "--preset", "tiny", "--epochs", 1,
                    "--vocab-size", 400, "--device", "cpu")
    assert_one_line_error(result, "validation")
    assert not (tmp_path / "m").exists()


# ---- evaluate --------------------------------------------------------------------------------
def test_evaluate_json(cli_trained, labeled_csv, labeled_frame):
    out, printed = cli_trained
    result = invoke("evaluate", "--model", out, "--data", labeled_csv, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    figures = one_json_object(result.stdout)
    assert figures["n"] == len(labeled_frame)
    assert 0.0 <= figures["jaccard"] <= 1.0
    assert figures["model_version"] == printed["version"]
    assert set(figures["per_sentiment"]) == set(SENTIMENTS)
    for sentiment, group in figures["per_sentiment"].items():
        assert group["n"] == (labeled_frame["sentiment"] == sentiment).sum()
        assert 0.0 <= group["jaccard"] <= 1.0
    # the overall figure is the n-weighted mean of the groups
    weighted = sum(g["jaccard"] * g["n"] for g in figures["per_sentiment"].values()) / figures["n"]
    assert figures["jaccard"] == pytest.approx(weighted)
    assert "sentiment_accuracy" not in figures


def test_evaluate_json_with_predicted_sentiment(cli_trained, labeled_csv):
    out, _ = cli_trained
    result = invoke("evaluate", "--model", out, "--data", labeled_csv, "--json", "--predict-sentiment",
                    "--limit", 30, "--device", "cpu")
    assert result.exit_code == 0, result.output
    figures = one_json_object(result.stdout)
    assert figures["n"] == 30
    assert 0.0 <= figures["sentiment_accuracy"] <= 1.0
    assert 0.0 <= figures["predicted_sentiment"]["jaccard"] <= 1.0
    # fp32: the command's figures (each tweet and label read once) are those of separate passes
    from span_jobs.data import read_labeled
    from span_jobs.evaluate import evaluate_model
    from span_jobs.extract import SpanExtractor
    from span_jobs.model import load_model_dir

    result = invoke("evaluate", "--model", out, "--data", labeled_csv, "--json", "--predict-sentiment",
                    "--limit", 30, "--device", "cpu", "--precision", "float32")
    plain = evaluate_model(SpanExtractor(load_model_dir(out), device="cpu", precision="float32"),
                           read_labeled(labeled_csv).tweets[:30], predict_sentiment=True)
    figures = one_json_object(result.stdout)
    assert figures["predicted_sentiment"]["per_sentiment"] == plain["predicted_sentiment"]["per_sentiment"]
    assert (figures["jaccard"], figures["sentiment_accuracy"]) == (plain["jaccard"], plain["sentiment_accuracy"])


@pytest.mark.parametrize("decoding, settings", [
    ("expected-jaccard", {}),
    ("greedy", dict(decoding="likeliest", span_candidates=1, last_candidates=1)),
])
def test_evaluate_decoding_choice_is_the_extractor_it_names(cli_trained, labeled_csv, decoding, settings):
    from span_jobs.data import read_labeled
    from span_jobs.evaluate import evaluate_model
    from span_jobs.extract import SpanExtractor
    from span_jobs.model import load_model_dir

    out, _ = cli_trained
    result = invoke("evaluate", "--model", out, "--data", labeled_csv, "--json", "--device", "cpu",
                    "--decoding", decoding)
    assert result.exit_code == 0, result.output
    direct = evaluate_model(SpanExtractor(load_model_dir(out), device="cpu", **settings),
                            read_labeled(labeled_csv).tweets)
    assert one_json_object(result.stdout)["per_sentiment"] == direct["per_sentiment"]


def test_greedy_and_expected_jaccard_decodings_really_differ(cli_trained, labeled_csv):
    """Else the test above could not tell whether --decoding reaches the extractor."""
    out, _ = cli_trained
    figures = [one_json_object(invoke("evaluate", "--model", out, "--data", labeled_csv, "--json", "--device", "cpu",
                                      "--decoding", d).stdout) for d in ("greedy", "expected-jaccard")]
    assert figures[0]["per_sentiment"] != figures[1]["per_sentiment"]


def test_unknown_decoding_is_a_usage_error(cli_trained, labeled_csv):
    out, _ = cli_trained
    result = invoke("evaluate", "--model", out, "--data", labeled_csv, "--decoding", "beam")
    assert result.exit_code == 2 and "beam" in result.output  # click's usage error


@pytest.mark.parametrize("split", ["validation", "validation-choice", "validation-report", "train"])
def test_evaluate_split(cli_trained, labeled_csv, labeled_frame, split):
    out, _ = cli_trained
    result = invoke("evaluate", "--model", out, "--data", labeled_csv, "--split", split, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    validation = [i for i in labeled_frame["textID"] if is_validation(i)]
    assert 0 < len(validation) < len(labeled_frame)
    expected = {
        "validation": len(validation), "train": len(labeled_frame) - len(validation),
        "validation-choice": sum(validation_part(i) == "choice" for i in validation),
        "validation-report": sum(validation_part(i) == "report" for i in validation),
    }[split]
    figures = one_json_object(result.stdout)
    assert figures["n"] == expected and figures["split"] == split  # says which part the figure is from


def test_evaluate_text_report(cli_trained, labeled_csv):
    out, printed = cli_trained
    result = invoke("evaluate", "--model", out, "--data", labeled_csv, "--limit", 12, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"model {printed['version']}: jaccard ")
    assert "on 12 tweets" in result.stdout


def test_evaluate_promoted_model(cli_trained, labeled_csv, tmp_path):
    out, printed = cli_trained
    registry = Registry(tmp_path / "registry")
    shutil.copytree(out, registry.new_model_dir(printed["version"]))
    registry.promote(printed["version"], printed["jaccard"])
    result = invoke("evaluate", "--model", "promoted", "--registry", registry.root, "--data", labeled_csv,
                    "--limit", 5, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert one_json_object(result.stdout)["model_version"] == printed["version"]


def test_evaluate_with_predicted_sentiment_on_an_empty_split(cli_trained, tmp_path, make_rows, save_csv):
    out, _ = cli_trained
    rows = [r for r in make_rows(40, seed=9) if not is_validation(r["textID"])][:10]
    path = save_csv(rows, tmp_path / "train-only.csv")
    result = invoke("evaluate", "--model", out, "--data", path, "--split", "validation", "--predict-sentiment",
                    "--json", "--device", "cpu")
    assert isinstance(result.exception, (SystemExit, type(None))), f"uncaught {result.exception!r}"
    if result.exit_code:
        assert_one_line_error(result)


def test_console_script_evaluate_prints_only_json_on_stdout(cli_trained, labeled_csv):
    """One real process: the installed `span-jobs` script, as other tools call it."""
    out, printed = cli_trained
    script = Path(sys.executable).with_name("span-jobs")
    assert script.exists(), f"console script not installed at {script}"
    completed = subprocess.run(
        [str(script), "evaluate", "--model", str(out), "--data", str(labeled_csv), "--limit", "20", "--json",
         "--device", "cpu"],
        capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert completed.returncode == 0, completed.stderr
    figures = one_json_object(completed.stdout)
    assert figures["n"] == 20
    assert figures["model_version"] == printed["version"]
    assert {"jaccard", "n", "per_sentiment"} <= set(figures)


# ---- predict ---------------------------------------------------------------------------------
def test_predict_writes_parquet_with_prediction_columns(cli_trained, tmp_path, save_csv):
    out, printed = cli_trained
    rows = [
        {"id": "1", "text": "  i love this day so much", "sentiment": "Positive ", "lang": "en"},
        {"id": "2", "text": "ugh so tired of work {today}", "sentiment": "", "lang": "en"},
        {"id": "3", "text": "", "sentiment": "neutral", "lang": ""},
        {"id": "4", "text": "NA", "sentiment": "", "lang": "xx"},
    ]
    source = save_csv(rows, tmp_path / "tweets.csv")
    target = tmp_path / "out" / "spans.parquet"
    result = invoke("predict", "--model", out, "--input", source, "--output", target, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"wrote 4 rows to {target}" in result.stdout
    frame = pq.read_table(target).to_pandas()
    assert PREDICTION_COLUMNS | {"id", "text", "lang"} <= set(frame.columns)
    assert frame["id"].tolist() == ["1", "2", "3", "4"]  # same rows, same order
    assert frame["text"].tolist() == [r["text"] for r in rows]
    assert frame["lang"].tolist() == ["en", "en", "", "xx"]
    assert frame["model_version"].tolist() == [printed["version"]] * 4
    assert frame["sentiment"][0] == "positive" and frame["sentiment"][2] == "neutral"
    assert frame["sentiment"].isin(SENTIMENTS).all()
    assert pd.isna(frame["sentiment_prob"][0]) and pd.isna(frame["sentiment_prob"][2])
    assert 1 / 3 - 1e-6 <= frame["sentiment_prob"][1] <= 1.0
    assert 1 / 3 - 1e-6 <= frame["sentiment_prob"][3] <= 1.0
    for text, span, start, end in zip(frame["text"], frame["span"], frame["span_start"], frame["span_end"]):
        assert text[start:end] == span
    assert (frame["span"][2], frame["span_start"][2], frame["span_end"][2]) == ("", 0, 0)
    assert frame["span"][3] == "NA"


def test_predict_reads_parquet_without_sentiment(cli_trained, tmp_path):
    out, _ = cli_trained
    source = tmp_path / "raw.parquet"
    pq.write_table(pa.table({"id": [10, 11], "text": ["so sad today", "best weekend ever"],
                             "created_at": ["2024-01-01", "2024-01-02"]}), source)
    target = tmp_path / "spans.parquet"
    result = invoke("predict", "--model", out, "--input", source, "--output", target, "--device", "cpu")
    assert result.exit_code == 0, result.output
    frame = pq.read_table(target).to_pandas()
    assert frame["id"].tolist() == [10, 11]
    assert frame["created_at"].tolist() == ["2024-01-01", "2024-01-02"]
    assert PREDICTION_COLUMNS <= set(frame.columns)
    assert frame["sentiment_prob"].notna().all()


def test_predict_keeps_a_textid_column(cli_trained, tmp_path, save_csv):
    out, _ = cli_trained
    source = save_csv([{"textID": "k1", "text": "so sad", "sentiment": "negative"}], tmp_path / "kaggle.csv")
    target = tmp_path / "spans.parquet"
    result = invoke("predict", "--model", out, "--input", source, "--output", target, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert pq.read_table(target).to_pandas()["textID"].tolist() == ["k1"]


def test_predict_keeps_the_inputs_other_columns_as_they_are(cli_trained, tmp_path):
    """Types pandas would change (an integer column with a null, a zoned timestamp) come out as they went in;
    a column named like a prediction (an earlier run's span) is replaced, not doubled."""
    out, printed = cli_trained
    source = tmp_path / "raw.parquet"
    created = pa.array([1_700_000_000_000_000, None], type=pa.timestamp("us", tz="Europe/Paris"))
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["so sad today", "best weekend ever"],
                             "retweets": pa.array([3, None], type=pa.int64()), "created_at": created,
                             "span": ["stale", "stale"]}), source)
    target = tmp_path / "spans.parquet"
    result = invoke("predict", "--model", out, "--input", source, "--output", target, "--device", "cpu")
    assert result.exit_code == 0, result.output
    table = pq.read_table(target)
    assert table.column_names[:4] == ["id", "text", "retweets", "created_at"]
    assert table.schema.field("retweets").type == pa.int64()
    assert table.column("retweets").to_pylist() == [3, None]
    assert table.schema.field("created_at").type == pa.timestamp("us", tz="Europe/Paris")
    assert table.column("created_at").equals(pa.chunked_array([created]))
    assert table.column_names.count("span") == 1
    spans, texts = table.column("span").to_pylist(), table.column("text").to_pylist()
    assert all(span in text for span, text in zip(spans, texts)) and "stale" not in spans
    assert table.schema.field("span_start").type == pa.int64()
    assert table.schema.field("sentiment_prob").type == pa.float64()
    assert table.column("model_version").to_pylist() == [printed["version"]] * 2


# ---- errors: one line, exit status 1 -----------------------------------------------------------
def test_missing_data_file(tmp_path):
    result = invoke("evaluate", "--model", tmp_path, "--data", tmp_path / "nope.csv", "--device", "cpu")
    assert_one_line_error(result, "nope.csv", "no such file")


def test_missing_training_file(tmp_path):
    result = invoke("train", "--data", tmp_path / "nope.csv", "--out", tmp_path / "m", "--preset", "tiny")
    assert_one_line_error(result, "nope.csv")


def test_missing_labeled_column(cli_trained, tmp_path, save_csv):
    out, _ = cli_trained
    path = save_csv([{"textID": "1", "text": "so sad", "sentiment": "negative"}], tmp_path / "nolabel.csv")
    result = invoke("evaluate", "--model", out, "--data", path, "--device", "cpu")
    assert_one_line_error(result, "nolabel.csv", "selected_text")


def test_missing_text_column_in_predict(cli_trained, tmp_path, save_csv):
    out, _ = cli_trained
    path = save_csv([{"id": "1", "body": "so sad"}], tmp_path / "notext.csv")
    result = invoke("predict", "--model", out, "--input", path, "--output", tmp_path / "o.parquet")
    assert_one_line_error(result, "notext.csv", "text")
    assert not (tmp_path / "o.parquet").exists()


def test_missing_predict_input(cli_trained, tmp_path):
    out, _ = cli_trained
    result = invoke("predict", "--model", out, "--input", tmp_path / "nope.parquet", "--output", tmp_path / "o.parquet")
    assert_one_line_error(result, "nope.parquet")


def test_unknown_sentiment_in_predict_input(cli_trained, tmp_path, save_csv):
    out, _ = cli_trained
    rows = [{"id": "1", "text": "so sad", "sentiment": "negative"}, {"id": "2", "text": "yay", "sentiment": "joy"}]
    path = save_csv(rows, tmp_path / "bad.csv")
    result = invoke("predict", "--model", out, "--input", path, "--output", tmp_path / "o.parquet")
    assert_one_line_error(result, "bad.csv", "row 2", "joy")
    assert not (tmp_path / "o.parquet").exists()


def test_model_directory_that_does_not_exist(labeled_csv, tmp_path):
    result = invoke("evaluate", "--model", tmp_path / "no-model", "--data", labeled_csv, "--device", "cpu")
    assert_one_line_error(result, "no-model", "no such model directory")


def test_pickle_only_model_directory(labeled_csv, tmp_path, tokenizer):
    model = tmp_path / "pickled"
    model.mkdir()
    (model / "pytorch_model.bin").write_bytes(b"never unpickled")
    (model / "spiece.model").write_bytes(tokenizer.model_proto)
    result = invoke("evaluate", "--model", model, "--data", labeled_csv, "--device", "cpu")
    assert_one_line_error(result, "safetensors")


def test_model_directory_with_garbage_config(cli_trained, labeled_csv, tmp_path):
    out, _ = cli_trained
    broken = shutil.copytree(out, tmp_path / "broken")
    (broken / "config.json").write_text("{ this is not json")
    result = invoke("evaluate", "--model", broken, "--data", labeled_csv, "--device", "cpu")
    assert_one_line_error(result, "broken")


def test_model_directory_with_corrupt_weights(cli_trained, labeled_csv, tmp_path):
    out, _ = cli_trained
    broken = shutil.copytree(out, tmp_path / "corrupt")
    (broken / "model.safetensors").write_bytes(b"\x00garbage" * 8)
    result = invoke("evaluate", "--model", broken, "--data", labeled_csv, "--device", "cpu")
    assert_one_line_error(result, "corrupt")


# ---- docs: every command ends its docstring with a runnable example ------------------------------
def docs_problems(name, command) -> list[str]:
    """What is wrong with a command's docs: its docstring must end with `Example: span-jobs <name> ...`."""
    lines = [line.strip() for line in (command.help or "").strip().splitlines() if line.strip()]
    if not lines:
        return [f"`span-jobs {name}` has no docstring"]
    example = lines[-1]
    if not example.startswith("Example: "):
        return [f"`span-jobs {name}` docstring does not end with an `Example:` line"]
    argv = shlex.split(example.removeprefix("Example: "))
    problems = []
    if argv[:2] != ["span-jobs", name]:
        problems.append(f"example of {name} does not run `span-jobs {name}`: {example}")
    known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
    unknown = {arg.split("=")[0] for arg in argv[2:] if arg.startswith("--")} - known
    if unknown:
        problems.append(f"example of {name} uses options the command lacks: {sorted(unknown)}")
    return problems


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_command_documents_an_example(name):
    assert docs_problems(name, cli.commands[name]) == []
    result = invoke(name, "--help")
    assert result.exit_code == 0
    assert "Example:" in result.stdout


def test_the_docs_check_catches_a_command_without_example():
    import click

    @click.command()
    @click.option("--data")
    def bare(data):
        """Do something."""

    @click.command()
    @click.option("--data")
    def stale(data):
        """Do something.

        Example: span-jobs stale --data x.csv --old-option 3
        """

    assert docs_problems("bare", bare) == ["`span-jobs bare` docstring does not end with an `Example:` line"]
    assert docs_problems("stale", stale) == ["example of stale uses options the command lacks: ['--old-option']"]


def test_core_commands_exist():
    assert {"train", "evaluate", "predict"} <= set(cli.commands)


@pytest.mark.parametrize("args", [
    ["train", "--data", "{inside}/labeled.csv", "--out", "{outside}/m"],
    ["train", "--data", "{outside}/labeled.csv", "--out", "{inside}/m"],
    ["evaluate", "--data", "{outside}/labeled.csv", "--model", "{inside}/m"],
    ["evaluate", "--data", "{inside}/labeled.csv", "--model", "{outside}/m"],
    ["predict", "--input", "{outside}/t.csv", "--output", "{inside}/o.parquet"],
    ["predict", "--input", "{inside}/t.csv", "--output", "{outside}/o.parquet"],
    ["calibrate", "--model", "{outside}/m", "--data", "{inside}/labeled.csv"],
    ["extract", "--inbox", "{outside}", "--database", "{inside}/db.duckdb"],
    ["retrain", "--data", "{inside}/labeled.csv", "--data", "{outside}/new.csv"],
    ["report", "--out", "{outside}/r.html"],
    ["query", "select 1", "--database", "{outside}/db.duckdb"],
])
def test_every_command_checks_its_paths_the_same_way(tmp_path, monkeypatch, args, labeled_csv):
    """One shared option per kind of path: each refuses a path outside SPAN_JOBS_ROOTS (a model
    directory where its name is resolved, registry.resolve_model_dir) and writes nothing there."""
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    shutil.copy(labeled_csv, inside / "labeled.csv")
    monkeypatch.setenv("SPAN_JOBS_ROOTS", str(inside))
    monkeypatch.setenv("SPAN_JOBS_HOME", str(inside / "home"))
    result = invoke(*[a.format(inside=inside, outside=outside) for a in args])
    assert_one_line_error(result, "outside the allowed roots")
    assert not list(outside.iterdir())  # nothing was written there


def test_only_named_errors_become_one_line(tmp_path):
    assert_one_line_error(invoke("extract", "--inbox", tmp_path / "no-such-inbox", "--database", tmp_path / "db"),
                          "no-such-inbox", "inbox is neither")
    from span_jobs.cli import KNOWN_ERRORS

    assert ValueError not in KNOWN_ERRORS and OSError not in KNOWN_ERRORS  # a bug keeps its traceback
