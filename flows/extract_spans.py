"""Prefect flows "extract-spans" and "extract-file": new inbox Parquet files -> spans in the store.

Extract (find new files) / Transform (stream each through the model) / Load (one transaction
per file) — the work itself lives in span_jobs.pipeline; this file only orchestrates and reports.

One machine: extract-spans runs the whole inbox in one flow run. Many machines: extract-spans
with ``fan_out`` only dispatches, one extract-file flow run per new file version, to a work pool
whose workers (one per GPU, ``--limit 1``) may sit on any number of machines. The claims and the
ledger keep each file exactly once whoever runs it; the idempotency key keeps a file from being
queued twice while a run for it is pending.
"""

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from span_jobs import pipeline, settings
from span_jobs.extract import make_extractor
from span_jobs.inbox import InboxFile, discover, is_in_ledger
from span_jobs.runtime import keep_freed_memory

EXTRACT_FILE_DEPLOYMENT = "extract-file/extract-file"


@task(cache_policy=NO_CACHE)
def load_extractor(model: str, registry: str | None, device: str, token_budget: int | None, decoding: str,
                   ray_actors: int = 0, ray_gpus_per_actor: float = 0):
    """Load the model once: every file of this run gets the same model version (on Ray: every actor)."""
    keep_freed_memory()  # each batch reuses the last one's pages, in this flow run's process
    if ray_actors:
        from span_jobs.ray_stage import RayExtractor

        return RayExtractor(model, registry, actors=ray_actors, gpus_per_actor=ray_gpus_per_actor, device=device,
                            token_budget=token_budget, decoding=decoding)
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
    fan_out: bool = False,
    ray_actors: int = 0,
    ray_gpus_per_actor: float = 0,
) -> dict:
    """Extract sentiment spans from new inbox files into DuckDB.

    inbox: directory or glob of Parquet files [default: $SPAN_JOBS_HOME/inbox]
    database: DuckDB file [default: $SPAN_JOBS_HOME/spans.duckdb]
    model: model directory, 'default', 'promoted' or 'full-text-baseline' (a directory is checked against
        SPAN_JOBS_ROOTS when it is loaded)
    token_budget: most padded tokens per inference batch [default: 4096 on CPU, 65536 on GPU]
    decoding: 'expected-jaccard' (best spans) or 'greedy' (about 1.25x faster on CPU)
    max_attempts: runs that may hit a storage read error on a file before it is recorded as failed
    fan_out: dispatch one extract-file flow run per new file to the work pool instead of extracting here
    ray_actors, ray_gpus_per_actor: run the model stage on a Ray actor pool (span-jobs[ray];
        RAY_ADDRESS joins a cluster): many GPUs of one node, one model per GPU
    """
    logger = get_run_logger()
    inbox = str(settings.checked_path(inbox or settings.default_inbox(), "inbox"))
    database = str(settings.checked_database(database or settings.default_database()))
    registry = str(settings.checked_path(registry, "registry")) if registry else None
    run_id = str(flow_run.get_id() or pipeline.new_run_id())
    if fan_out:
        files = discover(inbox, database, settle_seconds)
        common = dict(database=database, model=model, registry=registry, token_budget=token_budget, device=device,
                      batch_rows=batch_rows, decoding=decoding, max_attempts=max_attempts)
        dispatched = [dispatch_file(f, common) for f in files]
        logger.info("dispatched %d file(s) to %s", len(dispatched), EXTRACT_FILE_DEPLOYMENT)
        return {"run_id": run_id, "files_dispatched": len(dispatched), "flow_runs": dispatched}

    # ---- extract: the model, once for the whole run ----
    extractor = load_extractor(model, registry, device, token_budget, decoding, ray_actors, ray_gpus_per_actor)
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


def dispatch_file(f: InboxFile, parameters: dict) -> str:
    """One extract-file flow run for this file version; returns its id.

    The idempotency key is the file version: while a run for it is pending or running, the server
    hands back that run instead of a second one. A run that ended without putting the file in the
    ledger (it crashed, or left the file for a retry) is followed by a new one, keyed after it.
    """
    from prefect.deployments import run_deployment

    key = f"extract-file:{f.path}:{f.size_bytes}:{f.mtime_ns}"
    for _ in range(100):
        started = run_deployment(EXTRACT_FILE_DEPLOYMENT, timeout=0, as_subflow=False, idempotency_key=key,
                                 parameters={"path": str(f.path), "size_bytes": f.size_bytes, "mtime_ns": f.mtime_ns,
                                             **parameters})
        if started.state is None or not started.state.is_final():
            return str(started.id)
        key = f"{key}:after:{started.id}"
    raise RuntimeError(f"{f.path}: 100 runs of it ended without finishing it")


@flow(name="extract-file", log_prints=True)
def extract_file(
    path: str,
    size_bytes: int,
    mtime_ns: int,
    database: str | None = None,
    model: str = "promoted",
    registry: str | None = None,
    token_budget: int | None = None,
    device: str = "auto",
    batch_rows: int = 4096,
    decoding: str = "expected-jaccard",
    max_attempts: int = pipeline.MAX_ATTEMPTS,
) -> dict:
    """Extract one inbox file version (what extract-spans dispatches with fan_out).

    path, size_bytes, mtime_ns: the file version dispatched; a file rewritten since then is left
    for the run its new version gets
    """
    logger = get_run_logger()
    database = str(settings.checked_database(database or settings.default_database()))
    registry = str(settings.checked_path(registry, "registry")) if registry else None
    f = InboxFile(settings.checked_path(path, "inbox file"), size_bytes, mtime_ns)
    try:
        current = InboxFile.of(Path(path))
    except FileNotFoundError:
        current = None
    if current is None or current.key != f.key or is_in_ledger(f, database):  # before loading any model
        logger.info("%s: done already, or no longer this version; nothing to do", path)
        return {"path": path, "status": "skipped"}
    extractor = load_extractor(model, registry, device, token_budget, decoding)
    run_id = str(flow_run.get_id() or pipeline.new_run_id())
    outcome = pipeline.process_file(f, extractor, database, run_id, batch_rows, max_attempts=max_attempts)
    logger.info("%s: %s, %d rows in, %d stored, %d quarantined", path, outcome.status, outcome.rows_in,
                outcome.rows_stored, outcome.rows_quarantined)
    return {"path": outcome.path, "status": outcome.status, "rows_in": outcome.rows_in,
            "rows_stored": outcome.rows_stored, "rows_quarantined": outcome.rows_quarantined,
            "model_version": extractor.version, "error": outcome.error}


if __name__ == "__main__":
    extract_spans()
