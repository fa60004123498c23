"""Reports over the store: the report views as tables, and a self-contained HTML page with charts."""

import base64
import html
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and workers
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .errors import StoreError  # noqa: E402
from .store import connect, ensure_schema, is_lake  # noqa: E402

COLORS = {"negative": "#c0392b", "neutral": "#7f8c8d", "positive": "#27ae60"}


@dataclass
class Report:
    tables: dict[str, pd.DataFrame]  # view name -> rows
    summary: dict[str, int]
    charts: dict[str, bytes]  # title -> PNG


def _legend_outside(ax) -> None:
    """The legend right of the plot, where it cannot cover bars or points."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def _day(value) -> str:
    """A date as 2026-12-01: pandas reads DuckDB dates as midnight timestamps."""
    return pd.Timestamp(value).strftime("%Y-%m-%d")


def _readable_times(frame: pd.DataFrame) -> pd.DataFrame:
    """Dates without a midnight time, timestamps to the second: for the page's tables."""
    frame = frame.copy()
    for column in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[column]):
            values = frame[column].dropna()
            is_date = not values.empty and (values == values.dt.normalize()).all() and column.endswith("date")
            frame[column] = frame[column].dt.strftime("%Y-%m-%d" if is_date else "%Y-%m-%d %H:%M:%S")
    return frame


def model_in_service(registry_root: str | Path | None = None) -> dict | None:
    """The champion (or the shipped default while nothing is promoted) and its recorded validation
    figures; None when there is no model at all."""
    from .errors import ModelError
    from .registry import Registry

    try:
        directory = Registry(registry_root).champion_dir()
        metadata = json.loads((directory / "span_jobs.json").read_text())
    except (ModelError, OSError, ValueError):
        return None
    validation = metadata.get("validation", {})
    quoted = validation.get("report_part") or validation  # the half where nothing was chosen, when recorded
    return {
        "version": metadata.get("version", directory.name),
        "figures_from": "report half of validation" if "report_part" in validation else "validation",
        "jaccard": quoted.get("jaccard"),
        "end_to_end_jaccard": (quoted.get("predicted_sentiment") or {}).get("jaccard"),
        "sentiment_accuracy": quoted.get("sentiment_accuracy"),
    }


def _frame(con, sql: str) -> pd.DataFrame:
    """A query's rows as a DataFrame, through Arrow (duckdb's own .df() warns under pandas 3)."""
    return con.execute(sql).to_arrow_table().to_pandas()


def collect(database: str | Path, registry_root: str | Path | None = None) -> dict[str, pd.DataFrame]:
    if not is_lake(database) and not Path(database).exists():  # a typo must not quietly report on a new database
        raise StoreError(f"{database}: no such database")
    ensure_schema(database)
    serving = model_in_service(registry_root)
    with connect(database, read_only=True) as con:
        return {
            "model_in_service": pd.DataFrame([serving] if serving else []),
            "summary": _frame(con, (
                "select (select count(*) from spans) as spans_stored, "
                "(select count(*) from quarantine) as rows_quarantined, "
                "(select count(*) from processed_files where status = 'done') as files_done, "
                "(select count(*) from processed_files where status = 'failed') as files_failed, "
                "(select count(distinct model_version) from spans) as model_versions")),
            "sentiment_mix_by_day": _frame(con, "select * from sentiment_mix_by_day"),
            "top_phrases_by_sentiment": _frame(con, "select * from top_phrases_by_sentiment"),
            "span_confidence_by_day": _frame(con, "select * from span_confidence_by_day"),
            "model_history": _frame(con, "select * from model_history"),
            "quarantine_reasons": _frame(con, "select * from quarantine_reasons"),
            "file_status": _frame(con, "select * from file_status limit 50"),
        }


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def sentiment_mix_figure(mix: pd.DataFrame):
    """Stacked bars of tweets per day and sentiment (the sentiment_mix_by_day view)."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    if mix.empty:
        ax.text(0.5, 0.5, "no spans yet", ha="center", va="center")
    else:
        pivot = mix.pivot_table(index="tweet_date", columns="sentiment", values="tweet_count", fill_value=0)
        bottom = None
        labels = [_day(d) for d in pivot.index]
        for sentiment in pivot.columns:
            values = pivot[sentiment].to_numpy()
            ax.bar(labels, values, bottom=bottom, label=sentiment, color=COLORS.get(sentiment))
            bottom = values if bottom is None else bottom + values
        _legend_outside(ax)
        ax.tick_params(axis="x", rotation=45)
    ax.set_title("Tweets per day by sentiment")
    ax.set_ylabel("tweets")
    return fig


def _top_phrases_chart(phrases: pd.DataFrame) -> bytes:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, sentiment in zip(axes, ("positive", "negative")):
        top = phrases[phrases["sentiment"] == sentiment].head(10)
        ax.barh(top["phrase"].str.slice(0, 30)[::-1], top["phrase_count"][::-1], color=COLORS[sentiment])
        ax.set_title(f"Top {sentiment} phrases")
        if top.empty:
            ax.text(0.5, 0.5, "none yet", ha="center", va="center", transform=ax.transAxes)
    return _png(fig)


def _model_history_chart(history: pd.DataFrame, serving: pd.DataFrame) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 3))
    if history.empty and not serving.empty:  # nothing retrained yet: what the model in service scores
        model = serving.iloc[0]
        names = ["sentiment given", "end to end", "sentiment accuracy"]
        values = [model["jaccard"], model["end_to_end_jaccard"], model["sentiment_accuracy"]]
        shown = [(n, float(v)) for n, v in zip(names, values) if v is not None and pd.notna(v)]
        bars = ax.barh([n for n, _ in shown][::-1], [v for _, v in shown][::-1], color="#2c7fb8")
        ax.bar_label(bars, fmt="%.3f", padding=3)
        ax.set_xlim(0, 1)
        ax.set_title(f"Model in service: {model['version']} (no training runs yet; {model['figures_from']})",
                     fontsize=10)
        return _png(fig)
    if history.empty:
        ax.text(0.5, 0.5, "no model and no training runs yet", ha="center", va="center")
    else:
        x = range(len(history))
        ax.plot(x, history["challenger_jaccard"], marker="o", label="challenger")
        ax.plot(x, history["champion_jaccard"], marker="s", label="champion")
        ax.plot(x, history["baseline_jaccard"], linestyle="--", label="full-text baseline")
        promoted = history["is_promoted"].to_numpy()
        ax.scatter([i for i in x if promoted[i]], history["challenger_jaccard"][promoted],
                   s=120, facecolors="none", edgecolors="green", label="promoted")
        ax.set_xticks(list(x), [pd.Timestamp(v).strftime("%Y-%m-%d %H:%M") for v in history["started_at"]],
                      rotation=30, ha="right")
        _legend_outside(ax)
    ax.set_title("Validation Jaccard per training run")
    return _png(fig)


def build_report(database: str | Path, registry_root: str | Path | None = None) -> Report:
    tables = collect(database, registry_root)
    summary = {k: int(v) for k, v in tables.pop("summary").iloc[0].items()}
    charts = {
        "Sentiment mix over time": _png(sentiment_mix_figure(tables["sentiment_mix_by_day"])),
        "Top phrases per sentiment": _top_phrases_chart(tables["top_phrases_by_sentiment"]),
        "Model history": _model_history_chart(tables["model_history"], tables["model_in_service"]),
    }
    return Report(tables, summary, charts)


def render_html(report: Report, database: str | Path) -> str:
    """One HTML file with the charts inlined as PNG data: opens anywhere, no network, no server."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>span-jobs report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;font-size:13px;margin-bottom:2em}td,th{border:1px solid #ccc;padding:3px 6px}"
        "th{background:#f3f3f3}img{max-width:100%}</style></head><body>",
        f"<h1>span-jobs report</h1><p>{html.escape(str(database))} — generated "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}</p><ul>",
    ]
    parts += [f"<li>{html.escape(k.replace('_', ' '))}: <b>{v:,}</b></li>" for k, v in report.summary.items()]
    parts.append("</ul>")
    for title, png in report.charts.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>")
    for name, frame in report.tables.items():
        parts.append(f"<h2>{html.escape(name.replace('_', ' '))}</h2>")
        parts.append(_readable_times(frame.head(100)).to_html(index=False, na_rep="", border=0)
                     if not frame.empty else "<p>none</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(database: str | Path, out_path: str | Path, registry_root: str | Path | None = None) -> Report:
    report = build_report(database, registry_root)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(render_html(report, database), encoding="utf-8")
    return report
