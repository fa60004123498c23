"""Reports over the store: the report views as tables, and a self-contained HTML page with charts."""

import base64
import html
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and workers
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .errors import StoreError  # noqa: E402
from .store import connect, ensure_schema  # noqa: E402

COLORS = {"negative": "#c0392b", "neutral": "#7f8c8d", "positive": "#27ae60"}


@dataclass
class Report:
    tables: dict[str, pd.DataFrame]  # view name -> rows
    summary: dict[str, int]
    charts: dict[str, bytes]  # title -> PNG


def collect(database: str | Path) -> dict[str, pd.DataFrame]:
    if not Path(database).exists():  # a typo must not quietly report on a new, empty database
        raise StoreError(f"{database}: no such database")
    ensure_schema(database)
    with connect(database, read_only=True) as con:
        return {
            "summary": con.execute(
                "select (select count(*) from spans) as spans_stored, "
                "(select count(*) from quarantine) as rows_quarantined, "
                "(select count(*) from processed_files where status = 'done') as files_done, "
                "(select count(*) from processed_files where status = 'failed') as files_failed, "
                "(select count(distinct model_version) from spans) as model_versions"
            ).df(),
            "sentiment_mix_by_day": con.execute("select * from sentiment_mix_by_day").df(),
            "top_phrases_by_sentiment": con.execute("select * from top_phrases_by_sentiment").df(),
            "span_confidence_by_day": con.execute("select * from span_confidence_by_day").df(),
            "model_history": con.execute("select * from model_history").df(),
            "quarantine_reasons": con.execute("select * from quarantine_reasons").df(),
            "file_status": con.execute("select * from file_status limit 50").df(),
        }


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _sentiment_mix_chart(mix: pd.DataFrame) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 3.5))
    if mix.empty:
        ax.text(0.5, 0.5, "no spans yet", ha="center", va="center")
    else:
        pivot = mix.pivot_table(index="tweet_date", columns="sentiment", values="tweet_count", fill_value=0)
        bottom = None
        labels = [str(d) for d in pivot.index]
        for sentiment in pivot.columns:
            values = pivot[sentiment].to_numpy()
            ax.bar(labels, values, bottom=bottom, label=sentiment, color=COLORS.get(sentiment))
            bottom = values if bottom is None else bottom + values
        ax.legend()
        ax.tick_params(axis="x", rotation=45)
    ax.set_title("Tweets per day by sentiment")
    ax.set_ylabel("tweets")
    return _png(fig)


def _top_phrases_chart(phrases: pd.DataFrame) -> bytes:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, sentiment in zip(axes, ("positive", "negative")):
        top = phrases[phrases["sentiment"] == sentiment].head(10)
        ax.barh(top["phrase"].str.slice(0, 30)[::-1], top["phrase_count"][::-1], color=COLORS[sentiment])
        ax.set_title(f"Top {sentiment} phrases")
        if top.empty:
            ax.text(0.5, 0.5, "none yet", ha="center", va="center", transform=ax.transAxes)
    return _png(fig)


def _model_history_chart(history: pd.DataFrame) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 3))
    if history.empty:
        ax.text(0.5, 0.5, "no training runs yet", ha="center", va="center")
    else:
        x = range(len(history))
        ax.plot(x, history["challenger_jaccard"], marker="o", label="challenger")
        ax.plot(x, history["champion_jaccard"], marker="s", label="champion")
        ax.plot(x, history["baseline_jaccard"], linestyle="--", label="full-text baseline")
        promoted = history["is_promoted"].to_numpy()
        ax.scatter([i for i in x if promoted[i]], history["challenger_jaccard"][promoted],
                   s=120, facecolors="none", edgecolors="green", label="promoted")
        ax.set_xticks(list(x), [str(v)[:19] for v in history["started_at"]], rotation=30, ha="right")
        ax.legend()
    ax.set_title("Validation Jaccard per training run")
    return _png(fig)


def build_report(database: str | Path) -> Report:
    tables = collect(database)
    summary = {k: int(v) for k, v in tables.pop("summary").iloc[0].items()}
    charts = {
        "Sentiment mix over time": _sentiment_mix_chart(tables["sentiment_mix_by_day"]),
        "Top phrases per sentiment": _top_phrases_chart(tables["top_phrases_by_sentiment"]),
        "Model history": _model_history_chart(tables["model_history"]),
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
        parts.append(frame.head(100).to_html(index=False, na_rep="", border=0) if not frame.empty else "<p>none</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(database: str | Path, out_path: str | Path) -> Report:
    report = build_report(database)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(render_html(report, database), encoding="utf-8")
    return report
