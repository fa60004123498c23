"""Prefect flow "span-report": report views as Prefect artifacts, plus a self-contained HTML file."""

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from span_jobs import settings
from span_jobs.report import write_report


@flow(name="span-report")
def span_report(database: str | None = None, out: str | None = None, registry: str | None = None) -> str:
    """Publish the reports of a span database; returns the path of the HTML report.

    registry: where the model in service is found [default: $SPAN_JOBS_HOME/registry]
    """
    logger = get_run_logger()
    database = str(settings.checked_database(database or settings.default_database()))
    out = str(settings.checked_path(out or settings.default_report(), "out"))
    registry = str(settings.checked_path(registry, "registry")) if registry else None
    report = write_report(database, out, registry)
    lines = [f"- {k.replace('_', ' ')}: **{v:,}**" for k, v in report.summary.items()]
    create_markdown_artifact(key="span-report-summary", markdown="## span-jobs\n\n" + "\n".join(lines)
                             + f"\n\nHTML report with charts: `{out}`")
    for name, frame in report.tables.items():
        rows = frame.head(100).astype(str).to_dict(orient="records")
        create_table_artifact(key=f"span-report-{name.replace('_', '-')}", table=rows or [{"rows": "none"}],
                              description=name.replace("_", " "))
    logger.info("report written to %s", out)
    return out
