"""The `span-jobs` command: a thin shell over the library; each command calls one library function."""

import json
import logging
import os
import shlex
import sys
from pathlib import Path

import click

from . import settings
from .errors import DataError, ModelError, PathOutsideRoots, StoreError, TokenizerError, TrainingError

# Errors the library names; each becomes one clear line and exit status 1. Anything else is a
# bug or a fault of the machine, and keeps its traceback.
KNOWN_ERRORS: tuple[type[Exception], ...] = (
    DataError, ModelError, TokenizerError, StoreError, TrainingError, PathOutsideRoots,
)


class SpanJobsGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KNOWN_ERRORS as exc:
            raise click.ClickException(str(exc)) from exc


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def path_option(*names: str, what: str, help: str, default=None, required: bool = False, multiple: bool = False,
                check=None):
    """A path option that every command defaults and checks the same way: the settings' default when
    it is not given, then resolved and refused outside SPAN_JOBS_ROOTS (settings.checked_path)."""
    check = check or (lambda value: settings.checked_path(value, what))

    def callback(ctx, param, value):
        if value is None or value == ():
            value = default() if default is not None else value
        if multiple:
            return tuple(check(v) for v in value or ())
        return check(value) if value is not None else None

    return click.option(*names, type=click.Path(path_type=Path) if what != "database" else str, default=None,
                        required=required, multiple=multiple, callback=callback, help=help)


def _lake_data(ctx, param, value):
    """Where a new lake keeps its Parquet files; set for this process and the ones it starts."""
    if value:
        os.environ["SPAN_JOBS_LAKE_DATA"] = value if "://" in value else str(settings.checked_path(value, "lake data"))
    return value


def database_option(command):
    command = click.option("--lake-data", default=None, expose_value=False, callback=_lake_data,
                           help="With a ducklake: database, where the lake keeps its Parquet files (a directory "
                                "all workers share, or an object-store URL); needed when the lake is created "
                                "[default: $SPAN_JOBS_LAKE_DATA].")(command)
    return path_option("--database", what="database", default=settings.default_database,
                       check=settings.checked_database,
                       help="A DuckDB file, or a lake shared by many workers: ducklake:postgres:<libpq string> "
                            "[default: $SPAN_JOBS_DATABASE, else $SPAN_JOBS_HOME/spans.duckdb].")(command)
inbox_option = path_option("--inbox", what="inbox", default=settings.default_inbox,
                           help="Directory or glob of Parquet files [default: $SPAN_JOBS_HOME/inbox].")
registry_option = path_option("--registry", what="registry", default=settings.registry_root,
                              help="Model registry directory [default: $SPAN_JOBS_HOME/registry].")
labeled_option = path_option("--data", "data_path", what="data", required=True,
                             help="Labeled CSV/Parquet file or a directory of them.")


def model_option(default: str = "default"):
    """A model name; a directory is checked against SPAN_JOBS_ROOTS where names are resolved (registry.py)."""
    return click.option("--model", "model_spec", default=default, show_default=True,
                        help="A model directory, 'default' (shipped), 'promoted' (the registry's champion)"
                             " or 'full-text-baseline' (the whole tweet, no model).")
device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
precision_option = click.option(
    "--precision", type=click.Choice(["auto", "float32", "bfloat16"]), default="auto", show_default=True,
    help="Inference dtype: auto is bfloat16 on GPUs and on CPUs with native bf16 (AVX512-BF16, AMX; about 2x "
         "faster at the same Jaccard), float32 elsewhere.")
decoding_option = click.option(
    "--decoding", type=click.Choice(["expected-jaccard", "greedy"]), default="expected-jaccard", show_default=True,
    help="How a span is chosen: the highest expected Jaccard among 12x12 candidates, or greedy (about 1.25x faster on CPU).",
)
recipe_option = click.option(
    "--recipe", type=click.Choice(["default"]), default=None,
    help="Train the way a named recipe does: 'default' is how the shipped default model was trained (needs "
         "span-jobs[teacher]); its settings replace the defaults of the options not given.")


teacher_dir_option = path_option(
    "--teacher-dir", what="teacher", help="A BERT-style model directory (safetensors, tokenizer files) to distill "
                                         "from and take embeddings from [default: span-jobs[teacher]'s MiniLM-L6].")


def _given(ctx: click.Context, **options) -> dict:
    """The options set on the command line; the rest come from the recipe or TrainConfig's defaults.
    Paths become strings: a TrainConfig is written into the model's metadata as JSON."""
    from click.core import ParameterSource

    return {k: str(v) if isinstance(v, Path) else v for k, v in options.items()
            if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}


budget_option = click.option(
    "--token-budget", default=None, type=click.IntRange(min=64),
    help="Most padded tokens in one inference batch [default: 4096 on CPU, 65536 on GPU].",
)


@click.group(cls=SpanJobsGroup)
@click.option("-v", "--verbose", is_flag=True, help="Log progress to stderr.")
@click.version_option(package_name="span-jobs")
def cli(verbose: bool) -> None:
    """Sentiment span extraction with T5: train, evaluate, extract into DuckDB, report."""
    _setup_logging(verbose)


@cli.command()
@labeled_option
@path_option("--out", "out_dir", what="out", required=True, help="Model directory to write.")
@click.option("--preset", default="small", show_default=True, help="Model size: tiny, small, small-deep, medium or base.")
@click.option("--init-from", default=None, help="Fine-tune this model (directory, default or promoted) instead.")
@click.option("--epochs", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--vocab-size", default=8000, show_default=True, type=click.IntRange(min=200))
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Train on the first N rows only.")
@click.option("--seed", default=0, show_default=True)
@click.option("--dropout", default=0.1, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="The student's dropout rate (T5's default 0.1; the default recipe's is 0: the student underfits).")
@click.option("--save-dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="Precision of the saved weights; bfloat16 halves the file.")
@click.option("--distill", is_flag=True,
              help="Also learn from a pretrained teacher's span probabilities (needs span-jobs[teacher]).")
@click.option("--distill-weight", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="With --distill: share of the span and sentiment loss taken from the teacher's distributions.")
@click.option("--state-weight", default=1.0, show_default=True, type=click.FloatRange(min=0),
              help="With --distill: weight of matching the teacher's word states.")
@click.option("--sentiment-teacher", type=click.Choice(["joint", "classifier"]), default="joint", show_default=True,
              help="With --distill: the sentiment targets come from the span teacher's own head, or from a "
                   "separate classifier fine-tuned from the same encoder (better sentiment, ~15 min more on 2 cores).")
@click.option("--teacher-epochs", default=1, show_default=True, type=click.IntRange(min=1),
              help="With --distill: epochs of each teacher's fine-tuning (about 6 min each on 2 cores in bf16).")
@click.option("--pretrained-embeddings", is_flag=True,
              help="Start the piece embeddings from MiniLM's (needs span-jobs[teacher]).")
@click.option("--augment-copies", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also train on this many copies of each positive and negative tweet with some words outside "
                   "the gold span dropped; with --distill the teacher labels each copy.")
@click.option("--teacher-cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --distill: keep the teachers' outputs in this directory and read them back in later runs "
                   "with the same data and teacher settings (saves 8 min of the default recipe on 2 cores with bf16; "
                   "for trials, not to reproduce a model).")
@click.option("--repair-labels", is_flag=True,
              help="Train on the spans the annotators meant: gold spans that the extra-spaces shift cut are moved "
                   "back onto whole words (calibration then decides whether predictions are shifted back).")
@click.option("--polar-weight", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Weight of positive and negative tweets' span rows in the span losses, against 1 for neutral "
                   "span rows.")
@click.option("--sentiment-weight", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Weight of the sentiment-tagging rows in the losses, against 1 for neutral span rows.")
@click.option("--sentiment-states", is_flag=True,
              help="With --distill: the tagging rows also match the teacher's word states of the tweet read alone "
                   "(the states its sentiment comes from), as span rows match its states of tweet and sentiment "
                   "(the default recipe's choice).")
@click.option("--average-checkpoints", is_flag=True,
              help="Also try the mean of the last k epochs' weights and keep it where it validates better.")
@click.option("--cpu-precision", type=click.Choice(["auto", "float32", "bfloat16"]), default="float32",
              show_default=True,
              help="Training precision on CPU (teachers and student; GPUs always use bf16 autocast): auto is bf16 "
                   "autocast where the CPU has native bf16 (the default recipe's choice). Figures stay fp32.")
@teacher_dir_option
@recipe_option
@device_option
@click.pass_context
def train(ctx, data_path, out_dir, recipe, **options):
    """Train a model on labeled tweets; keeps the checkpoint with the best validation Jaccard.

    Example: span-jobs train --data labeled.csv --preset tiny --epochs 1 --out /tmp/m
    """
    from .data import read_labeled
    from .train import TrainConfig
    from .train import train as run_training

    data = read_labeled(data_path)
    config = TrainConfig.from_recipe(recipe, **_given(ctx, **options))
    result = run_training(data, out_dir, config, command=shlex.join(["span-jobs", *sys.argv[1:]]))
    click.echo(json.dumps({"model": str(result.directory), "version": result.version, **result.validation}))


@cli.command()
@model_option()
@registry_option
@labeled_option
@click.option("--split", type=click.Choice(["all", "validation", "validation-choice", "validation-report", "train"]),
              default="all", show_default=True,
              help="Score every row, or only the fixed validation share (or its choice or report half, or the "
                   "training share). Settings are fitted on validation-choice: quote validation-report.")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Score the first N rows only.")
@click.option("--predict-sentiment", is_flag=True, help="Also tag sentiment and report accuracy and end-to-end Jaccard.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@device_option
@budget_option
@decoding_option
@precision_option
def evaluate(model_spec, registry, data_path, split, limit, predict_sentiment, as_json, device, token_budget,
             decoding, precision):
    """Score a model's spans on labeled tweets with word-level Jaccard.

    Example: span-jobs evaluate --model /tmp/m --data labeled.csv --split validation --json
    """
    from .data import read_labeled, select_split
    from .evaluate import evaluate_model
    from .extract import OutputMemo, make_extractor

    tweets = select_split(read_labeled(data_path).tweets, split)
    tweets = tweets[:limit] if limit else tweets
    # a memo: with --predict-sentiment the given labels of polar tweets are decoded once, not twice
    extractor = make_extractor(model_spec, registry, device=device, token_budget=token_budget, progress=True,
                               decoding=decoding, precision=precision, memo=OutputMemo())
    figures = {"split": split, **evaluate_model(extractor, tweets, predict_sentiment=predict_sentiment)}
    if as_json:
        click.echo(json.dumps(figures))
        return
    click.echo(f"model {figures['model_version']}: jaccard {figures['jaccard']:.4f} on {figures['n']} tweets "
               f"(split {split})")
    for sentiment, group in figures["per_sentiment"].items():
        click.echo(f"  {sentiment:<9} {group['jaccard']:.4f}  (n={group['n']})")
    if "sentiment_accuracy" in figures:
        click.echo(f"sentiment accuracy {figures['sentiment_accuracy']:.4f}; "
                   f"jaccard with predicted sentiment {figures['predicted_sentiment']['jaccard']:.4f}")


@cli.command()
@path_option("--model", "model_dir", what="model", required=True,
             help="The model directory to calibrate (changed in place: config.json and span_jobs.json).")
@path_option("--data", "data_path", what="data", required=True,
             help="Labeled CSV/Parquet: the data the model was trained on (its fixed validation split is used).")
@device_option
def calibrate(model_dir, data_path, device):
    """Fit a model's sentiment calibration and decision under uncertainty on the choice half of validation.

    Training does this itself; use it for a model trained before, or a local Hugging Face T5.
    Prints the fit and the figures of the report half, where nothing was fitted.

    Example: span-jobs calibrate --model models/m1 --data labeled.csv
    """
    from .calibration import calibrate_model_dir
    from .data import read_labeled, select_split

    summary = calibrate_model_dir(model_dir, select_split(read_labeled(data_path).tweets, "validation"), device)
    click.echo(json.dumps(summary))


@cli.command()
@model_option()
@registry_option
@path_option("--input", "input_path", what="input", required=True,
             help="CSV/Parquet with an id (id or textID) and text; sentiment optional.")
@path_option("--output", "output_path", what="output", required=True, help="Parquet file to write.")
@device_option
@budget_option
@decoding_option
@precision_option
def predict(model_spec, registry, input_path, output_path, device, token_budget, decoding, precision):
    """Add sentiment, sentiment_prob, span, span_start, span_end, span_confidence and model_version to a file.

    Example: span-jobs predict --model promoted --input tweets.csv --output spans.parquet
    """
    from .predict import predict_file

    written = predict_file(input_path, output_path, model_spec, registry=registry, device=device,
                           token_budget=token_budget, decoding=decoding, precision=precision)
    click.echo(f"wrote {written} rows to {output_path}")


@cli.command()
@inbox_option
@database_option
@model_option("promoted")
@registry_option
@device_option
@budget_option
@decoding_option
@precision_option
@click.option("--settle-seconds", default=10.0, show_default=True,
              help="Leave files modified this recently for a later run (they may still be being written).")
@click.option("--max-attempts", default=3, show_default=True, type=click.IntRange(min=1),
              help="Runs that may hit a storage read error on a file before it is recorded as failed.")
@click.option("--ray-actors", default=0, show_default=True, type=click.IntRange(min=0),
              help="Run the model stage on a pool of this many Ray actors (span-jobs[ray]; RAY_ADDRESS "
                   "joins a cluster); 0 runs it in this process.")
@click.option("--ray-gpus-per-actor", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="With --ray-actors: GPUs each actor holds (1: one model per GPU).")
def extract(inbox, database, model_spec, registry, device, token_budget, decoding, precision, settle_seconds,
            max_attempts, ray_actors, ray_gpus_per_actor):
    """Extract spans from new inbox files into DuckDB (what the extract-spans flow runs).

    Example: span-jobs extract --inbox inbox/ --database spans.duckdb --model promoted
    """
    from .extract import make_extractor
    from .pipeline import run_extract

    if ray_actors:
        from .ray_stage import RayExtractor

        extractor = RayExtractor(model_spec, registry, actors=ray_actors, gpus_per_actor=ray_gpus_per_actor,
                                 device=device, token_budget=token_budget, decoding=decoding, precision=precision)
    else:
        extractor = make_extractor(model_spec, registry, device=device, token_budget=token_budget, decoding=decoding,
                                   precision=precision)
    summary = run_extract(inbox, database, extractor, settle_seconds=settle_seconds, max_attempts=max_attempts)
    for f in summary.files:
        click.echo(f"{f.status:<8} {f.path}: {f.rows_in} in, {f.rows_stored} stored, {f.rows_quarantined} quarantined"
                   + (f" ({f.error})" if f.error else ""))
    click.echo(f"run {summary.run_id}: {len(summary.files)} file(s), {summary.rows_stored} spans stored, "
               f"{summary.rows_quarantined} rows quarantined, model {summary.model_version}")


@cli.command()
@path_option("--data", "data_paths", what="data", multiple=True, default=lambda: (settings.default_labeled(),),
             help="Labeled CSV/Parquet file or directory; repeat to train on several "
                  "[default: $SPAN_JOBS_HOME/labeled].")
@registry_option
@database_option
@click.option("--preset", default="small", show_default=True)
@click.option("--init-from", default=None, help="Fine-tune this model ('promoted', 'default' or a directory).")
@click.option("--epochs", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Train on the first N rows only.")
@click.option("--distill", is_flag=True, help="Learn from a pretrained teacher too (needs span-jobs[teacher]).")
@click.option("--pretrained-embeddings", is_flag=True,
              help="Start a fresh model's piece embeddings from MiniLM's (needs span-jobs[teacher]).")
@teacher_dir_option
@recipe_option
@device_option
@click.pass_context
def retrain(ctx, data_paths, registry, database, recipe, device, **options):
    """Train a challenger and promote it only if it beats the champion with the sentiment given
    and is no worse end to end (both on the same validation split).

    Example: span-jobs retrain --data labeled.csv --preset small --epochs 4
    """
    from .retrain import outcome_dict
    from .retrain import retrain as run_retrain
    from .train import TrainConfig

    config = TrainConfig.from_recipe(recipe, device=device, **_given(ctx, **options))
    outcome = run_retrain(list(data_paths), config, registry_root=registry, database=database, device=device)
    click.echo(json.dumps(outcome_dict(outcome)))


@cli.command()
@database_option
@path_option("--out", what="out", default=settings.default_report,
             help="HTML file to write [default: $SPAN_JOBS_HOME/report.html].")
@registry_option
def report(database, out, registry):
    """Write a self-contained HTML report with charts of the spans database.

    Example: span-jobs report --database spans.duckdb --out report.html
    """
    from .report import write_report

    summary = write_report(database, out, registry).summary
    click.echo(f"wrote {out}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in summary.items()))


@cli.command()
@click.argument("sql")
@database_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--max-rows", default=10_000, show_default=True, type=click.IntRange(min=1),
              help="Print at most this many rows; a note on stderr says when more were cut.")
@click.option("--timeout", "timeout_seconds", default=60.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Interrupt the query after this many seconds.")
@click.option("--wait", "wait_seconds", default=600.0, show_default=True, type=click.FloatRange(min=0),
              help="How long to wait for a writer's lock on the database before giving up.")
def query(sql, database, fmt, max_rows, timeout_seconds, wait_seconds):
    """Run one read-only SQL statement on the spans database (no writes, no attach, no file access).

    Example: span-jobs query "select sentiment, count(*) as tweets from spans group by sentiment"
    """
    import csv

    from .store import run_query

    def tell(message: str) -> None:
        click.echo(f"waiting: {message}", err=True)

    result = run_query(database, sql,
                       max_rows=max_rows, timeout_seconds=timeout_seconds, wait_seconds=wait_seconds, on_wait=tell)
    names, rows = result.names, result.rows
    if fmt == "json":
        for row in rows:
            click.echo(json.dumps(dict(zip(names, row)), default=str, ensure_ascii=False))
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(names)
        writer.writerows(rows)
    else:
        widths = [min(40, max([len(n)] + [len(str(r[i])) for r in rows])) for i, n in enumerate(names)]
        click.echo("  ".join(n.ljust(w) for n, w in zip(names, widths)))
        for row in rows:
            click.echo("  ".join(str(v)[:w].ljust(w) for v, w in zip(row, widths)))
        click.echo(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    if result.is_truncated:
        click.echo(f"note: only the first {max_rows} rows are shown; raise --max-rows or add a limit", err=True)
