"""The pipeline commands: extract, query (read-only), report, demo — and the README that documents them."""

import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from flows.cli import cli  # the command as installed: the library's and the two Prefect ones

REPO = Path(__file__).resolve().parents[1]
SPAN_JOBS = str(Path(sys.executable).with_name("span-jobs"))


@pytest.fixture()
def database(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": ["love it", "hate it", ""],
                             "sentiment": ["positive", "negative", None]}), inbox / "x.parquet")
    db = tmp_path / "spans.duckdb"
    result = CliRunner().invoke(cli, ["extract", "--inbox", str(inbox), "--database", str(db),
                                      "--model", "full-text-baseline", "--settle-seconds", "0"])
    assert result.exit_code == 0, result.output
    assert "3 in, 2 stored, 1 quarantined" in result.output
    return db


def test_query_formats(database):
    runner = CliRunner()
    table = runner.invoke(cli, ["query", "--database", str(database), "select tweet_id, span from spans order by 1"])
    assert table.exit_code == 0 and "love it" in table.output and "(2 rows)" in table.output
    as_json = runner.invoke(cli, ["query", "--database", str(database), "--format", "json",
                                  "select tweet_id, span from spans order by 1"])
    assert [json.loads(line) for line in as_json.output.splitlines()] == [
        {"tweet_id": "a", "span": "love it"}, {"tweet_id": "b", "span": "hate it"}]
    as_csv = runner.invoke(cli, ["query", "--database", str(database), "--format", "csv",
                                 "select reason from quarantine"])
    assert as_csv.output.splitlines() == ["reason", "empty text"]


@pytest.mark.parametrize("sql", [
    "delete from spans",
    "drop table spans",
    "insert into quarantine (source_file, source_row, reason, run_id, quarantined_at) values ('x', 1, 'y', 'z', now())",
    "attach ':memory:' as other",
    "attach '/tmp/elsewhere.duckdb' as other",
    "select * from read_csv('/etc/passwd')",
    "copy spans to '/tmp/leak.csv'",
    "set enable_external_access = true",
    "install httpfs",
])
def test_query_cannot_write_attach_or_touch_files(database, sql):
    result = CliRunner().invoke(cli, ["query", "--database", str(database), sql])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1
    con = duckdb.connect(str(database), read_only=True)
    assert con.execute("select count(*) from spans").fetchone() == (2,)
    con.close()


def test_query_takes_one_statement_per_call(database):
    result = CliRunner().invoke(cli, ["query", "--database", str(database), "select 1; select 2"])
    assert result.exit_code == 1 and "one statement per query, not 2" in result.output


def test_query_caps_the_rows_and_says_so(database):
    sql = "select * from range(25000)"
    capped = CliRunner().invoke(cli, ["query", "--database", str(database), "--format", "csv", sql])
    assert capped.exit_code == 0
    assert len(capped.stdout.splitlines()) == 1 + 10_000  # header + the default cap
    assert "only the first 10000 rows" in capped.stderr
    raised = CliRunner().invoke(cli, ["query", "--database", str(database), "--format", "csv", "--max-rows",
                                      "30000", sql])
    assert len(raised.stdout.splitlines()) == 1 + 25_000 and "only the first" not in raised.stderr


def test_query_is_interrupted_at_its_timeout(database):
    slow = "select count(*) from range(100000000000) as a"
    started = __import__("time").monotonic()
    result = CliRunner().invoke(cli, ["query", "--database", str(database), "--timeout", "1", slow])
    assert result.exit_code == 1 and "interrupted after its 1 s timeout" in result.output
    assert __import__("time").monotonic() - started < 30


@contextmanager
def writer_holding(database, seconds: float):
    """Another process that opens the database for writing (DuckDB's file lock) and holds it."""
    writer = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, time\n"
        f"con = duckdb.connect({str(database)!r})\n"
        "print('locked', flush=True)\n"
        f"time.sleep({seconds})\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "locked"
        yield
    finally:
        writer.kill()
        writer.wait()


def test_query_says_it_waits_while_a_writer_holds_the_database(database):
    """A writer in another process holds DuckDB's file lock; the query says so, waits, then runs."""
    with writer_holding(database, 3):
        result = subprocess.run([SPAN_JOBS, "query", "--database", str(database), "select count(*) as n from spans"],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "waiting: " in result.stderr and "locked by another process" in result.stderr
    assert "(1 row)" in result.stdout


def test_query_gives_up_waiting_with_one_line(database):
    with writer_holding(database, 6):
        result = subprocess.run([SPAN_JOBS, "query", "--database", str(database), "--wait", "1", "select 1"],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ") and "cannot open" in result.stderr


def test_query_on_missing_database_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["query", "--database", str(tmp_path / "none.duckdb"), "select 1"])
    assert result.exit_code == 1 and "no such database" in result.output


def test_report_command_writes_html(database, tmp_path):
    out = tmp_path / "r.html"
    result = CliRunner().invoke(cli, ["report", "--database", str(database), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().count("data:image/png;base64,") == 3


def test_extract_refuses_paths_outside_roots(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAN_JOBS_ROOTS", str(tmp_path / "root"))
    result = CliRunner().invoke(cli, ["extract", "--inbox", str(tmp_path / "root" / ".." / "x"),
                                      "--database", str(tmp_path / "root" / "db"), "--model", "full-text-baseline"])
    assert result.exit_code == 1 and "outside the allowed roots" in result.output


def test_demo_runs_end_to_end_from_a_fresh_directory(tmp_path):
    env = {**os.environ, "SPAN_JOBS_HOME": str(tmp_path / "home")}
    result = subprocess.run([SPAN_JOBS, "demo", "--workdir", str(tmp_path / "demo")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "598 stored, 2 quarantined" in result.stdout
    query = re.search(r"try:\s+(span-jobs query .*)", result.stdout).group(1)
    shown = subprocess.run([SPAN_JOBS, *__import__("shlex").split(query)[1:]], capture_output=True, text=True, env=env)
    assert shown.returncode == 0 and "(10 rows)" in shown.stdout
    report = (tmp_path / "demo" / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 3


def test_readme_documents_every_command_and_only_real_ones():
    readme = (REPO / "README.md").read_text()
    commands = set(cli.commands)
    mentioned = set(re.findall(r"`(?:\.venv\/bin\/)?span-jobs ([a-z][a-z-]+)|^(?:\.venv\/bin\/)?span-jobs ([a-z][a-z-]+)", readme, re.M))
    mentioned = {a or b for a, b in mentioned}
    assert commands <= mentioned, f"undocumented commands: {commands - mentioned}"
    assert mentioned <= commands, f"README mentions commands that do not exist: {mentioned - commands}"
    for target in ("demo", "test"):
        assert f"make {target}" in readme
    makefile = (REPO / "Makefile").read_text()
    assert "torch==2.13.0" in makefile and "pytest" in makefile
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test\n" in ci and "make test-slow" in ci  # the slow tests are skipped by make test, not by CI
    for path in re.findall(r"`((?:tests|bench|sql|deployments|flows)/[\w./]+?)(?:::\w+)?`", readme):
        assert (REPO / path).exists(), f"README names {path}, which does not exist"
