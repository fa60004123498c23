"""The `span-jobs` command: a thin shell over the library; each command calls one library function."""

import json
import logging
import shlex
import sys
from pathlib import Path

import click

from .data import DataError
from .model import ModelError
from .tokenizer import TokenizerError

# Errors the library names; each becomes one clear line and exit status 1, not a traceback.
KNOWN_ERRORS: tuple[type[Exception], ...] = (DataError, ModelError, TokenizerError, ValueError, OSError)


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


model_option = click.option(
    "--model", "model_spec", default="default", show_default=True,
    help="A model directory, 'default' (shipped) or 'promoted' (the registry's champion).",
)
registry_option = click.option(
    "--registry", type=click.Path(path_type=Path), default=None,
    help="Model registry directory [default: $SPAN_JOBS_HOME/registry].",
)
device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
budget_option = click.option(
    "--token-budget", default=8192, show_default=True, type=click.IntRange(min=64),
    help="Most padded tokens in one inference batch.",
)


@click.group(cls=SpanJobsGroup)
@click.option("-v", "--verbose", is_flag=True, help="Log progress to stderr.")
@click.version_option(package_name="span-jobs")
def cli(verbose: bool) -> None:
    """Sentiment span extraction with T5: train, evaluate, extract into DuckDB, report."""
    _setup_logging(verbose)


@cli.command()
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help="Labeled CSV/Parquet file or a directory of them.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Model directory to write.")
@click.option("--preset", default="small", show_default=True, help="Model size: tiny, small, medium or base.")
@click.option("--init-from", default=None, help="Fine-tune this model (directory, default or promoted) instead.")
@click.option("--epochs", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--vocab-size", default=8000, show_default=True, type=click.IntRange(min=200))
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Train on the first N rows only.")
@click.option("--seed", default=0, show_default=True)
@device_option
def train(data_path, out_dir, preset, init_from, epochs, batch_size, lr, vocab_size, limit, seed, device):
    """Train a model on labeled tweets; keeps the checkpoint with the best validation Jaccard.

    Example: span-jobs train --data labeled.csv --preset tiny --epochs 1 --out /tmp/m
    """
    from .data import read_labeled
    from .train import TrainConfig
    from .train import train as run_training

    data = read_labeled(data_path)
    config = TrainConfig(preset=preset, init_from=init_from, epochs=epochs, batch_size=batch_size, lr=lr,
                         vocab_size=vocab_size, limit=limit, seed=seed, device=device)
    result = run_training(data, out_dir, config, command=shlex.join(["span-jobs", *sys.argv[1:]]))
    click.echo(json.dumps({"model": str(result.directory), "version": result.version, **result.validation}))


@cli.command()
@model_option
@registry_option
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path), help="Labeled CSV/Parquet.")
@click.option("--split", type=click.Choice(["all", "validation", "train"]), default="all", show_default=True,
              help="Score every row, or only the fixed validation (or training) share.")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Score the first N rows only.")
@click.option("--predict-sentiment", is_flag=True, help="Also tag sentiment and report accuracy and end-to-end Jaccard.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@device_option
@budget_option
def evaluate(model_spec, registry, data_path, split, limit, predict_sentiment, as_json, device, token_budget):
    """Score a model's spans on labeled tweets with word-level Jaccard.

    Example: span-jobs evaluate --model default --data labeled.csv --split validation --json
    """
    from .data import read_labeled, split_train_validation
    from .evaluate import evaluate_model
    from .extract import SpanExtractor
    from .model import load_model

    tweets = read_labeled(data_path).tweets
    if split != "all":
        train_part, validation_part = split_train_validation(tweets)
        tweets = validation_part if split == "validation" else train_part
    tweets = tweets[:limit] if limit else tweets
    extractor = SpanExtractor(load_model(model_spec, registry), device=device, token_budget=token_budget)
    figures = evaluate_model(extractor, tweets, predict_sentiment=predict_sentiment)
    if as_json:
        click.echo(json.dumps(figures))
        return
    click.echo(f"model {figures['model_version']}: jaccard {figures['jaccard']:.4f} on {figures['n']} tweets")
    for sentiment, group in figures["per_sentiment"].items():
        click.echo(f"  {sentiment:<9} {group['jaccard']:.4f}  (n={group['n']})")
    if "sentiment_accuracy" in figures:
        click.echo(f"sentiment accuracy {figures['sentiment_accuracy']:.4f}; "
                   f"jaccard with predicted sentiment {figures['predicted_sentiment']['jaccard']:.4f}")


@cli.command()
@model_option
@registry_option
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path),
              help="CSV/Parquet with an id (id or textID) and text; sentiment optional.")
@click.option("--output", "output_path", required=True, type=click.Path(path_type=Path), help="Parquet file to write.")
@device_option
@budget_option
def predict(model_spec, registry, input_path, output_path, device, token_budget):
    """Add sentiment, sentiment_prob, span, span_start, span_end and model_version to a file of tweets.

    Example: span-jobs predict --model default --input tweets.csv --output spans.parquet
    """
    from .predict import predict_file

    written = predict_file(input_path, output_path, model_spec, registry=registry, device=device,
                           token_budget=token_budget)
    click.echo(f"wrote {written} rows to {output_path}")


def main() -> None:
    cli(prog_name="span-jobs")
