"""The Prefect flows under Prefect's test harness, with a real DuckDB file and real tiny models."""

import base64
import io
import re
import shutil

import duckdb
import matplotlib.image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect.testing.utilities import prefect_test_harness

from flows.extract_spans import extract_spans
from flows.report import span_report
from flows.retrain import retrain_model
from span_jobs.model import load_model_dir
from span_jobs.registry import Registry
from span_jobs.retrain import Scores, decide
from span_jobs.synthetic import synthetic_tweets


@pytest.fixture(scope="module", autouse=True)
def prefect_api():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def write_inbox_file(path, n, start=0):
    pq.write_table(pa.table({
        "id": [f"id{i}" for i in range(start, start + n)],
        "text": [f"so happy with tweet {i} today" for i in range(start, start + n)],
        "sentiment": [None if i % 2 else "positive" for i in range(start, start + n)],
    }), path)


def test_extract_spans_flow_is_idempotent_and_picks_up_new_files(tmp_path, tiny_model_dir):
    inbox, db = tmp_path / "inbox", tmp_path / "spans.duckdb"
    inbox.mkdir()
    write_inbox_file(inbox / "a.parquet", 30)
    params = dict(inbox=str(inbox), database=str(db), model=str(tiny_model_dir), settle_seconds=0, device="cpu")
    first = extract_spans(**params)
    assert (first["files_done"], first["rows_stored"]) == (1, 30)
    assert first["model_version"] == load_model_dir(tiny_model_dir).version
    assert extract_spans(**params)["files_done"] == 0
    write_inbox_file(inbox / "b.parquet", 5, start=1000)
    third = extract_spans(**params)
    assert (third["files_done"], third["rows_stored"]) == (1, 5)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("select count(*), count(distinct tweet_id), count(distinct run_id) from spans").fetchone() == (
        35, 35, 2)
    con.close()


def test_extract_flow_full_text_baseline_and_default_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAN_JOBS_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "inbox").mkdir(parents=True)
    write_inbox_file(tmp_path / "home" / "inbox" / "a.parquet", 4)
    result = extract_spans(model="full-text-baseline", settle_seconds=0)
    assert result["rows_stored"] == 4 and result["model_version"] == "full-text-baseline"
    assert (tmp_path / "home" / "spans.duckdb").exists()


def test_extract_flow_refuses_an_unknown_decoding_before_touching_anything(tmp_path):
    with pytest.raises(ValueError, match="unknown decoding 'beam'"):
        extract_spans(inbox=str(tmp_path / "inbox"), database=str(tmp_path / "db.duckdb"),
                      model="full-text-baseline", decoding="beam")
    assert not (tmp_path / "db.duckdb").exists()


def test_paths_outside_allowed_roots_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAN_JOBS_ROOTS", str(tmp_path / "allowed"))
    with pytest.raises(ValueError, match="outside the allowed roots"):
        extract_spans(inbox=str(tmp_path / "allowed" / ".." / "elsewhere"), database=str(tmp_path / "allowed" / "db"),
                      model="full-text-baseline")


def test_decision_is_strict_with_the_sentiment_given_and_never_worse_end_to_end():
    champion, baseline = Scores(0.60, 0.55, 0.7), Scores(0.50, 0.50, None)
    assert decide(Scores(0.61, 0.55, 0.7), champion, baseline)[0] is True  # end to end level: kept
    assert decide(Scores(0.61, 0.56, 0.7), champion, baseline)[0] is True
    assert decide(Scores(0.60, 0.60, 0.8), champion, baseline)[0] is False  # given not strictly higher
    assert decide(Scores(0.59, 0.60, 0.8), champion, baseline)[0] is False
    worse_for_users, reason = decide(Scores(0.65, 0.54, 0.7), champion, baseline)  # better given, worse end to end
    assert worse_for_users is False and "end to end 0.5400 < 0.5500" in reason
    assert decide(Scores(0.51, 0.50, 0.6), None, baseline)[0] is True
    assert decide(Scores(0.50, 0.60, 0.6), None, baseline)[0] is False
    assert decide(Scores(0.51, 0.49, 0.6), None, baseline)[0] is False


@pytest.fixture(scope="module")
def labeled_csv(tmp_path_factory):
    import pandas as pd

    path = tmp_path_factory.mktemp("labeled") / "labeled.csv"
    rows = synthetic_tweets(900, seed=3, prefix="lab")
    pd.DataFrame([{"textID": t.tweet_id, "text": t.text, "selected_text": t.selected_text, "sentiment": t.sentiment}
                  for t in rows]).to_csv(path, index=False)
    return path


GOOD = dict(preset="tiny", epochs=3, lr=3e-3, device="cpu")


def test_retrain_promotes_only_a_better_challenger(tmp_path, labeled_csv, tiny_model_dir):
    registry, db = tmp_path / "registry", tmp_path / "spans.duckdb"
    # the champion: an untrained tiny model, put in the registry the way retrain would
    weak = load_model_dir(tiny_model_dir)
    from span_jobs.model import save_model

    save_model(weak, Registry(registry).new_model_dir(weak.version))
    Registry(registry).promote(weak.version, 0.0)

    better = retrain_model(data=str(labeled_csv), registry=str(registry), database=str(db), **GOOD)
    assert better["is_promoted"], better["reason"]
    assert better["champion_version"] == weak.version
    assert better["challenger_jaccard"] > better["champion_jaccard"]
    assert Registry(registry).champion()["version"] == better["challenger_version"]

    worse = retrain_model(data=str(labeled_csv), registry=str(registry), database=str(db),
                          preset="tiny", epochs=1, lr=1e-7, device="cpu")
    assert not worse["is_promoted"]
    assert worse["champion_version"] == better["challenger_version"]
    assert worse["champion_jaccard"] == pytest.approx(better["challenger_jaccard"])  # same split, same scorer
    assert Registry(registry).champion()["version"] == better["challenger_version"]

    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("select is_promoted from training_runs order by started_at").fetchall() == [(True,), (False,)]
    # every promotion of the registry is recorded, the one made without a database included
    assert con.execute("select model_version from model_registry order by promoted_at").fetchall() == [
        (weak.version,), (better["challenger_version"],)]
    assert len(con.execute("select * from model_history").fetchall()) == 2
    con.close()


@pytest.fixture
def no_default_model(tmp_path, monkeypatch):
    """An install without a shipped default model (the package dir pointed at an empty place)."""
    import span_jobs.model

    monkeypatch.setattr(span_jobs.model, "DEFAULT_MODEL_DIR", tmp_path / "no-default-model")


def test_first_model_must_beat_the_full_text_baseline(tmp_path, labeled_csv, no_default_model):
    registry = tmp_path / "registry"
    result = retrain_model(data=str(labeled_csv), registry=str(registry), database=str(tmp_path / "db.duckdb"),
                           preset="tiny", epochs=1, lr=1e-7, device="cpu")
    assert not result["is_promoted"] and "baseline" in result["reason"]
    assert Registry(registry).champion() is None


def test_crashed_retrain_leaves_the_champion_and_is_recorded(tmp_path, labeled_csv, tiny_model_dir):
    registry, db = tmp_path / "registry", tmp_path / "spans.duckdb"
    weak = load_model_dir(tiny_model_dir)
    from span_jobs.model import save_model

    save_model(weak, Registry(registry).new_model_dir(weak.version))
    before = Registry(registry).promote(weak.version, 0.0)
    with pytest.raises(Exception, match="no such model directory"):
        retrain_model(data=str(labeled_csv), registry=str(registry), database=str(db),
                      init_from=str(tmp_path / "missing-model"), device="cpu")
    assert Registry(registry).champion() == before
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("select is_promoted, decision_reason like 'training failed%' from training_runs").fetchall() == [
        (False, True)]
    con.close()
    assert not [p for p in (registry / "models").iterdir() if p.name.startswith(".")]  # no half-written dirs


def test_report_flow_writes_html_with_real_charts(tmp_path):
    inbox, db, out = tmp_path / "inbox", tmp_path / "spans.duckdb", tmp_path / "report.html"
    inbox.mkdir()
    write_inbox_file(inbox / "a.parquet", 40)
    extract_spans(inbox=str(inbox), database=str(db), model="full-text-baseline", settle_seconds=0)
    assert span_report(database=str(db), out=str(out)) == str(out.resolve())
    page = out.read_text()
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) == 3
    for data in images:
        pixels = matplotlib.image.imread(io.BytesIO(base64.b64decode(data)), format="png")
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels.std() > 0.01  # something is drawn, not a blank canvas
    assert "so happy with tweet" in page  # the top-phrases table
    assert "spans stored: <b>40</b>" in page


def test_first_scheduled_retrain_starts_fresh_when_nothing_is_promoted(tmp_path, labeled_csv, no_default_model):
    """The deployments fine-tune 'promoted'; with nothing promoted and no default model, a fresh model is trained."""
    registry = tmp_path / "registry"
    result = retrain_model(data=str(labeled_csv), registry=str(registry), database=str(tmp_path / "db.duckdb"),
                           init_from="promoted", **GOOD)
    assert result["challenger_version"].startswith("tiny-")  # a fresh preset model, not a fine-tune
    assert result["champion_version"] is None and "baseline" in result["reason"]
    assert (Registry(registry).champion() is not None) == result["is_promoted"]


def test_the_shipped_default_is_the_champion_until_the_first_promotion(tmp_path, labeled_csv, tiny_model_dir,
                                                                       monkeypatch):
    """An install that ships a default model serves it before anything is promoted, so a challenger
    must beat it (not just the full-text baseline), and 'promoted' fine-tunes it."""
    import span_jobs.model

    shipped = tmp_path / "package" / "default_model"
    shutil.copytree(tiny_model_dir, shipped)
    monkeypatch.setattr(span_jobs.model, "DEFAULT_MODEL_DIR", shipped)
    registry = tmp_path / "registry"
    default_version = load_model_dir(shipped).version

    result = retrain_model(data=str(labeled_csv), registry=str(registry), database=str(tmp_path / "db.duckdb"),
                           init_from="promoted", **GOOD)
    assert result["champion_version"] == default_version
    assert result["challenger_version"].startswith("ft-")  # fine-tuned from the default, not a fresh model
    assert result["is_promoted"], result["reason"]  # three epochs beat the untrained default
    assert result["reason"].startswith("challenger") and "> champion" in result["reason"]
    assert Registry(registry).champion()["version"] == result["challenger_version"]
