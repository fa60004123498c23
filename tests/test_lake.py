"""Many extract workers on one lake: a real PostgreSQL cluster (started here, in a temp dir), a
real DuckLake catalog in it, real `span-jobs extract` processes, real SIGKILLs and a real
PostgreSQL restart. Every row of every file must be stored or quarantined exactly once."""

import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from span_jobs.store import connect

from test_reliability import make_inbox  # tests/ is on sys.path (pytest's default import mode)

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SPAN_JOBS = str(Path(sys.executable).with_name("span-jobs"))


def _as_postgres(args: list[str]) -> list[str]:
    """initdb refuses root: run the cluster as the postgres user when we are root."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


class Cluster:
    def __init__(self, root: Path):
        self.root, self.data = root, root / "data"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(_as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
                                     "-w", *args]), check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self.pg_ctl("-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def dsn(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user=postgres"


@pytest.fixture(scope="module")
def postgres():
    assert (PG_BIN / "initdb").exists(), "PostgreSQL 15 is needed (.ci/run installs Debian's postgresql)"
    # not under pytest's temp root: the postgres user cannot enter root's 0700 directories
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="span-jobs-postgres-")))
    if os.geteuid() == 0:
        shutil.chown(cluster.root, "postgres")
    subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(cluster.data), "-A", "trust", "--no-sync",
                                 "-U", "postgres"]), check=True, capture_output=True, timeout=120)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.pg_ctl("-m", "immediate", "stop")
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def lake(postgres, tmp_path, monkeypatch):
    """A new, empty lake: its own catalog database and data directory; the environment a worker gets."""
    name = f"lake_{os.getpid()}_{time.monotonic_ns()}"
    subprocess.run(_as_postgres([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(postgres.port),
                                 "-U", "postgres", name]), check=True, capture_output=True, timeout=60)
    data = tmp_path / "lake-data"
    home = tmp_path / "home"
    monkeypatch.setenv("SPAN_JOBS_HOME", str(home))
    monkeypatch.setenv("SPAN_JOBS_LAKE_DATA", str(data))
    return f"ducklake:postgres:{postgres.dsn(name)}", data


def extract(inbox, database, model="full-text-baseline"):
    return [SPAN_JOBS, "extract", "--inbox", str(inbox), "--database", database, "--model", str(model),
            "--settle-seconds", "0", "--device", "cpu"]


def query(database, sql) -> list[list[str]]:
    done = subprocess.run([SPAN_JOBS, "query", "--database", database, "--format", "csv", sql],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return list(csv.reader(io.StringIO(done.stdout)))[1:]


def check_exactly_once(database: str, ids: set[str], files: int) -> set[str]:
    """Every id stored or quarantined exactly once, every file done once; returns the runs that did work."""
    with connect(database, read_only=True) as con:
        stored = [r[0] for r in con.execute("select tweet_id from spans").fetchall()]
        quarantined = [r[0] for r in con.execute("select tweet_id from quarantine").fetchall()]
        ledger = con.execute("select file_path, count(*), min(status), max(run_id) from processed_files "
                             "group by file_path").fetchall()
        reconciled = con.execute("select bool_and(is_reconciled) from file_status where status = 'done'").fetchone()[0]
    assert len(stored) == len(set(stored)), "a tweet was stored twice"
    assert len(quarantined) == len(set(quarantined)), "a row was quarantined twice"
    assert not set(stored) & set(quarantined)
    assert set(stored) | set(quarantined) == ids, "rows were lost"
    assert len(ledger) == files and all(n == 1 and status == "done" for _, n, status, _ in ledger)
    assert reconciled
    return {run for *_, run in ledger}


def test_extract_into_a_lake_and_query_it_as_the_readme_shows(lake, tmp_path):
    database, data = lake
    inbox = tmp_path / "inbox"
    ids = make_inbox(inbox, files=3, rows=60)
    first = subprocess.run(extract(inbox, database), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert list(data.rglob("*.parquet")), "the lake keeps its tables as Parquet files under its data path"
    check_exactly_once(database, ids, files=3)
    again = subprocess.run(extract(inbox, database), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "0 file(s)" in again.stdout  # the ledger is in the lake too
    rows = query(database, "select count(*), count(distinct tweet_id), count(distinct run_id) from spans")
    assert rows == [[str(len(ids) - 3 * 2), str(len(ids) - 3 * 2), "1"]]  # rows 7 and 57 of each file are bad
    refused = subprocess.run([SPAN_JOBS, "query", "--database", database, "drop table spans"],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "read-only" in refused.stderr
    report = subprocess.run([SPAN_JOBS, "report", "--database", database, "--out", str(tmp_path / "r.html")],
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr


@pytest.mark.slow  # make test-slow; CI runs it (.ci/run)
def test_two_workers_one_killed_mid_run_then_a_final_run_store_every_row_once(lake, tmp_path, tiny_model_dir):
    database, _ = lake
    inbox = tmp_path / "inbox"
    ids = make_inbox(inbox, files=12, rows=150)
    workers = [subprocess.Popen(extract(inbox, database, tiny_model_dir), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.monotonic() + 300
    runs_with_work = 0
    while time.monotonic() < deadline and all(w.poll() is None for w in workers):
        try:
            runs_with_work = int(query(database, "select count(distinct run_id) from processed_files")[0][0])
        except AssertionError:  # the lake is still being created by the workers
            runs_with_work = 0
        if runs_with_work >= 2:
            break
        time.sleep(0.5)
    if runs_with_work < 2:
        for w in workers:
            w.kill()
        pytest.fail(f"both workers should have finished a file before the kill: {[w.communicate() for w in workers]}")
    workers[0].send_signal(signal.SIGKILL)
    workers[0].wait(timeout=60)
    out, err = workers[1].communicate(timeout=900)
    assert workers[1].returncode == 0, err
    final = subprocess.run(extract(inbox, database, tiny_model_dir), capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr
    runs = check_exactly_once(database, ids, files=12)
    assert len(runs) >= 2  # both workers stored files


@pytest.mark.slow  # make test-slow; CI runs it (.ci/run)
def test_a_postgres_restart_fails_the_file_in_hand_cleanly_and_the_next_run_finishes(lake, postgres, tmp_path,
                                                                                    tiny_model_dir):
    database, _ = lake
    inbox = tmp_path / "inbox"
    ids = make_inbox(inbox, files=8, rows=150)
    worker = subprocess.Popen(extract(inbox, database, tiny_model_dir), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and worker.poll() is None:
        try:
            if int(query(database, "select count(*) from processed_files")[0][0]) >= 1:
                break
        except AssertionError:
            pass
        time.sleep(0.5)
    postgres.pg_ctl("-m", "fast", "restart", "-o",
                    f"-p {postgres.port} -k {postgres.root} -c listen_addresses=127.0.0.1 -c fsync=off")
    out, err = worker.communicate(timeout=900)
    # a restart between two files passes unnoticed (every step opens its own session); one while a
    # file is in hand loses that file's claim, or the step's catalog session: the worker stops with
    # one clear line (no traceback) before loading the file
    lines = err.strip().splitlines()
    assert worker.returncode == 0 or (worker.returncode == 1 and lines[-1].startswith("Error: ")
                                      and "Traceback" not in err), err[-2000:]
    print("worker after the restart:", worker.returncode, err.strip().splitlines()[-1:] if err.strip() else "")
    final = subprocess.run(extract(inbox, database, tiny_model_dir), capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr
    check_exactly_once(database, ids, files=8)  # no partial file, and no claim left stuck


def test_a_lake_claim_excludes_other_sessions_and_ends_with_its_own(lake, tmp_path):
    from span_jobs.inbox import InboxFile, claim

    database, _ = lake
    (tmp_path / "a.parquet").write_bytes(b"x")
    f = InboxFile.of(tmp_path / "a.parquet")
    with claim(f, database) as first:
        assert first
        first.confirm()
        with claim(f, database) as second:  # another session, as another machine's worker would hold
            assert not second
    with claim(f, database) as again:
        assert again  # the first session ended, and its lock with it


def test_a_catalog_that_restarts_is_waited_for_and_one_that_stays_down_is_one_clear_error(lake, postgres,
                                                                                          monkeypatch):
    import threading

    from span_jobs import store
    from span_jobs.errors import StoreError

    database, _ = lake
    with connect(database) as con:
        con.execute("create table t as select 1 as x")
    postgres.pg_ctl("-m", "fast", "stop")
    try:
        monkeypatch.setattr(store, "CATALOG_WAIT_SECONDS", 2.0)
        for private in (False, True):  # this process's attached lake, and a new attach
            with pytest.raises(StoreError) as down:
                with connect(database, private=private):
                    pass
            message = str(down.value)
            assert message.startswith("cannot reach the lake's catalog: ") and "\n" not in message, message
            assert "Connection refused" in message and "waited 2 s" in message and "COPY" not in message, message
        monkeypatch.setattr(store, "CATALOG_WAIT_SECONDS", 60.0)
        back = threading.Timer(3.0, postgres.start)  # a restart: the catalog is back a few seconds later
        back.start()
        started = time.monotonic()
        with connect(database) as con:
            assert con.execute("select x from t").fetchall() == [(1,)]
        assert time.monotonic() - started >= 2.0  # it did wait for the catalog
        back.join()
    finally:
        try:
            postgres.start()
        except subprocess.CalledProcessError:
            pass  # already running


def test_a_catalog_restart_inside_a_transaction_is_one_clear_error_and_the_next_connection_works(lake, postgres):
    from span_jobs.errors import StoreError

    database, _ = lake
    with connect(database) as con:
        con.execute("create table t as select 1 as x")
    # the catalog goes away while a transaction is open, before its next read, its write or its commit;
    # each once crashed the process (DuckDB's rollback on close threw from C++) or left a traceback
    for step in ("read", "write", "commit"):
        with pytest.raises(StoreError) as lost:
            with connect(database) as con:
                con.execute("begin transaction")
                assert con.execute("select count(*) from t").fetchone() == (1,)
                postgres.pg_ctl("-m", "fast", "restart", "-o",
                                f"-p {postgres.port} -k {postgres.root} -c listen_addresses=127.0.0.1 -c fsync=off")
                if step == "read":
                    con.execute("select count(*) from t").fetchone()
                elif step == "write":
                    con.execute("insert into t values (2)")
                con.execute("commit")
        message = str(lost.value)
        assert message.startswith("lost the connection to the lake's catalog: ") and "\n" not in message, (step, message)
        with connect(database) as con:  # this process's attached lake is still usable, and nothing was committed
            assert con.execute("select x from t").fetchall() == [(1,)], step
