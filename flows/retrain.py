"""Prefect flow "retrain-model": train a challenger, promote it only if it beats the champion.

Scheduled weekly and triggered by the event "span-jobs.labeled-data.arrived" (see
deployments/prefect.yaml and `span-jobs labeled-arrived`). The gate lives in span_jobs.retrain.
"""

from dataclasses import asdict

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from span_jobs import settings
from span_jobs.retrain import retrain
from span_jobs.runtime import keep_freed_memory
from span_jobs.train import TrainConfig


@flow(name="retrain-model")
def retrain_model(
    data: str | None = None,
    new_data: str | None = None,
    registry: str | None = None,
    database: str | None = None,
    recipe: str | None = None,
    preset: str | None = None,
    init_from: str | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    limit: int | None = None,
    distill: bool | None = None,
    pretrained_embeddings: bool | None = None,
    device: str = "auto",
) -> dict:
    """Retrain on labeled data and promote only a challenger that is better with the sentiment given
    and no worse end to end.

    data: the labeled CSV/Parquet file or directory [default: $SPAN_JOBS_HOME/labeled]
    new_data: a new labeled file to add to data (the labeled-data event passes it): the run trains
    and gates on all of it, not on the new file alone

    recipe: 'default' trains the way the shipped default model was (span_jobs.train.RECIPES; needs
    span-jobs[teacher]); the training settings left unset (None) come from it, else from TrainConfig.
    init_from: None for a fresh model of `preset`, 'promoted' to fine-tune the champion, or a local
    Hugging Face T5 directory.
    """
    logger = get_run_logger()
    keep_freed_memory()  # each training step reuses the last one's pages, in this flow run's process
    sources = [str(settings.checked_path(data or settings.default_labeled(), "data"))]
    if new_data:
        sources.append(str(settings.checked_path(new_data, "new data")))
    registry = str(settings.checked_path(registry or settings.registry_root(), "registry"))
    database = str(settings.checked_database(database or settings.default_database()))
    config = TrainConfig.from_recipe(recipe, preset=preset, init_from=init_from, epochs=epochs, lr=lr,
                                     batch_size=batch_size, limit=limit, distill=distill,
                                     pretrained_embeddings=pretrained_embeddings, device=device)
    run_id = f"retrain-{flow_run.get_id() or 'local'}"
    outcome = retrain(sources, config, registry_root=registry, database=database, run_id=run_id, device=device)
    logger.info("%s", outcome.reason)

    def fmt(x):
        return "—" if x is None else f"{x:.4f}"

    create_markdown_artifact(
        key="retrain-model-decision",
        markdown=(
            f"## Retrain {outcome.run_id}: {'**promoted**' if outcome.is_promoted else 'not promoted'}\n\n"
            f"{outcome.reason}\n\n| model | version | Jaccard, sentiment given | end to end | sentiment accuracy |\n"
            f"|---|---|---|---|---|\n"
            f"| challenger | {outcome.challenger_version} | {fmt(outcome.challenger_jaccard)} | "
            f"{fmt(outcome.challenger_end_to_end_jaccard)} | {fmt(outcome.challenger_sentiment_accuracy)} |\n"
            f"| champion | {outcome.champion_version or '—'} | {fmt(outcome.champion_jaccard)} | "
            f"{fmt(outcome.champion_end_to_end_jaccard)} | {fmt(outcome.champion_sentiment_accuracy)} |\n"
            f"| full-text baseline | — | {fmt(outcome.baseline_jaccard)} | {fmt(outcome.baseline_end_to_end_jaccard)} "
            f"| — |\n\n"
            f"{outcome.n_train} training and {outcome.n_validation} validation tweets; data {outcome.data_digest[:12]}"
        ),
        description="Champion/challenger decision",
    )
    return asdict(outcome)


LABELED_DATA_EVENT = "span-jobs.labeled-data.arrived"


def announce_labeled_data(path: str) -> str:
    """Emit the event the retrain-model deployment's trigger waits for; the path travels as a resource label."""
    from prefect.events import emit_event

    emit_event(
        event=LABELED_DATA_EVENT,
        resource={"prefect.resource.id": f"span-jobs.labeled-data.{path}", "span-jobs.path": path},
    )
    return LABELED_DATA_EVENT
