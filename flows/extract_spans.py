"""Prefect flow "extract-spans": new inbox Parquet files -> spans in DuckDB.

Extract (find new files) / Transform (stream each through the model) / Load (one transaction
per file) — the work itself lives in span_jobs.pipeline; this file only orchestrates and reports.
"""

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from span_jobs import pipeline, settings
from span_jobs.extract import make_extractor


@task(cache_policy=NO_CACHE)
def load_extractor(model: str, registry: str | None, device: str, token_budget: int | None, decoding: str):
    """Load the model once: every file of this run gets the same model version."""
    return make_extractor(model, registry, device=device, token_budget=token_budget, decoding=decoding)


@task(cache_policy=NO_CACHE)
def extract_new_files(inbox: str, database: str, extractor, run_id: str, batch_rows: int,
                      settle_seconds: float, max_attempts: int) -> pipeline.RunSummary:
    """Every new inbox file, each claimed, staged and loaded in one transaction (the one extract driver)."""
    progress = create_progress_artifact(progress=0.0, key="extract-spans-progress",
                                        description="Share of this run's inbox files finished")

    def report(outcome: pipeline.FileOutcome, finished: int, total: int) -> None:
        update_progress_artifact(progress, progress=100.0 * finished / total)

    summary = pipeline.run_extract(inbox, database, extractor, run_id, batch_rows, settle_seconds, on_file=report,
                                   max_attempts=max_attempts)
    if not summary.files:
        update_progress_artifact(progress, progress=100.0)
    return summary


@flow(name="extract-spans", log_prints=True)
def extract_spans(
    inbox: str | None = None,
    database: str | None = None,
    model: str = "promoted",
    registry: str | None = None,
    token_budget: int | None = None,
    device: str = "auto",
    batch_rows: int = 4096,
    settle_seconds: float = 10.0,
    decoding: str = "expected-jaccard",
    max_attempts: int = pipeline.MAX_ATTEMPTS,
) -> dict:
    """Extract sentiment spans from new inbox files into DuckDB.

    inbox: directory or glob of Parquet files [default: $SPAN_JOBS_HOME/inbox]
    database: DuckDB file [default: $SPAN_JOBS_HOME/spans.duckdb]
    model: model directory, 'default', 'promoted' or 'full-text-baseline' (a directory is checked against
        SPAN_JOBS_ROOTS when it is loaded)
    token_budget: most padded tokens per inference batch [default: 4096 on CPU, 65536 on GPU]
    decoding: 'expected-jaccard' (best spans) or 'greedy' (about 2x faster on CPU)
    max_attempts: runs that may hit a storage read error on a file before it is recorded as failed
    """
    logger = get_run_logger()
    inbox = str(settings.checked_path(inbox or settings.default_inbox(), "inbox"))
    database = str(settings.checked_database(database or settings.default_database()))
    registry = str(settings.checked_path(registry, "registry")) if registry else None
    run_id = str(flow_run.get_id() or pipeline.new_run_id())

    # ---- extract: the model, once for the whole run ----
    extractor = load_extractor(model, registry, device, token_budget, decoding)
    logger.info("inbox %s; model %s", inbox, extractor.version)

    # ---- transform + load: file by file, each in one transaction ----
    summary = extract_new_files(inbox, database, extractor, run_id, batch_rows, settle_seconds, max_attempts)
    result = summary.totals()
    create_table_artifact(
        key="extract-spans-summary",
        table=[result] + [{"file": o.path, "status": o.status, "rows_in": o.rows_in, "rows_stored": o.rows_stored,
                           "rows_quarantined": o.rows_quarantined, "seconds": round(o.seconds, 2),
                           "error": o.error or ""} for o in summary.files],
        description=f"extract-spans run {run_id}: counts and throughput",
    )
    logger.info("done: %s", result)
    return result


if __name__ == "__main__":
    extract_spans()
