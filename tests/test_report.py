"""The HTML report as a user reads it: the model in service shown before any retraining, dates
without a midnight time, legends beside the bars instead of over them. A real DuckDB file."""

import shutil

import matplotlib.pyplot as plt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import span_jobs.model
from span_jobs.extract import FullTextExtractor
from span_jobs.model import load_model_dir
from span_jobs.pipeline import run_extract
from span_jobs.registry import Registry
from span_jobs.report import model_in_service, sentiment_mix_figure, write_report


def spans_database(tmp_path):
    inbox, db = tmp_path / "inbox", tmp_path / "spans.duckdb"
    inbox.mkdir()
    days = ["2026-11-29T10:00:00Z", "2026-11-30T11:00:00Z", "2026-12-01T12:00:00Z"] * 10
    pq.write_table(pa.table({"id": [f"t{i}" for i in range(30)], "text": [f"tweet number {i}" for i in range(30)],
                             "sentiment": ["positive", "negative", "neutral"] * 10, "created_at": days}),
                   inbox / "a.parquet")
    run_extract(inbox, db, FullTextExtractor())
    return db


def test_the_model_in_service_is_shown_before_any_training_run(tmp_path, tiny_model_dir, monkeypatch):
    shipped = tmp_path / "package" / "default_model"
    shutil.copytree(tiny_model_dir, shipped)
    monkeypatch.setattr(span_jobs.model, "DEFAULT_MODEL_DIR", shipped)
    version = load_model_dir(shipped).version
    db, out = spans_database(tmp_path), tmp_path / "report.html"

    report = write_report(db, out, tmp_path / "registry")  # nothing promoted: the shipped model serves
    assert report.tables["model_history"].empty
    assert report.tables["model_in_service"]["version"].tolist() == [version]
    page = out.read_text()
    assert "no training runs yet" not in page and version in page

    registry = Registry(tmp_path / "registry")  # once something is promoted, it is the one shown
    promoted = load_model_dir(tiny_model_dir)
    promoted.metadata.version = "promoted-one"
    span_jobs.model.save_model(promoted, registry.new_model_dir("promoted-one"))
    registry.promote("promoted-one", 0.5)
    assert model_in_service(registry.root)["version"] == "promoted-one"


def test_dates_print_as_dates(tmp_path):
    db, out = spans_database(tmp_path), tmp_path / "report.html"
    report = write_report(db, out, tmp_path / "registry")
    page = out.read_text()
    assert "00:00:00" not in page
    for day in ("2026-11-29", "2026-11-30", "2026-12-01"):
        assert day in page
    assert len(report.tables["sentiment_mix_by_day"]) == 3  # one sentiment a day, as written


def test_the_legend_does_not_cover_the_bars():
    days = [pd.Timestamp(f"2026-12-{d:02d}") for d in range(1, 11)]
    mix = pd.DataFrame([{"tweet_date": day, "sentiment": sentiment, "tweet_count": count}
                        for day in days for sentiment, count in (("negative", 40), ("neutral", 50), ("positive", 45))])
    fig = sentiment_mix_figure(mix)  # every day's bar as tall as the plot: no free corner inside it
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    bars = [patch.get_window_extent(renderer) for patch in ax.patches]
    assert len(bars) == 30 and not any(legend.overlaps(bar) for bar in bars)
    assert [t.get_text() for t in ax.get_xticklabels()][0] == "2026-12-01"
    plt.close(fig)
