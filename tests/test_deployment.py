"""The path a user takes: a real `prefect server start`, the deployments in deployments/prefect.yaml,
a process worker, `prefect deployment run extract-spans/extract-spans --watch`, spans in DuckDB.

Every process started here is stopped at the end, whatever happens.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
SPAN_JOBS = str(Path(sys.executable).with_name("span-jobs"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"Prefect server at {url} did not become healthy in {timeout}s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture()
def prefect_server(tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "SPAN_JOBS_HOME": str(tmp_path / "home")}
    for checkout_variable in ("SPAN_JOBS_REPO", "SPAN_JOBS_LABELED"):  # deployments must not need them
        env.pop(checkout_variable, None)
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(api, timeout=120)
        yield env
    finally:
        stop(server)
        log.close()


def run(args, env, timeout=180, cwd=REPO):
    result = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_deploy_and_run_extract_spans_through_a_worker(prefect_server, tmp_path, tiny_model_dir):
    env = prefect_server
    inbox, db = tmp_path / "inbox", tmp_path / "spans.duckdb"
    inbox.mkdir()
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(25)], "text": [f"deployed tweet {i} rocks" for i in range(25)]}),
                   inbox / "a.parquet")

    run([PREFECT, "work-pool", "create", "span-jobs", "--type", "process"], env)
    # deployed from outside the checkout, with no variable naming it: the flows come from the package
    run([PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", str(REPO / "deployments" / "prefect.yaml")],
        env, cwd=tmp_path)
    for name, module in (("extract-spans/extract-spans", "flows.extract_spans.extract_spans"),
                         ("extract-file/extract-file", "flows.extract_spans.extract_file"),
                         ("retrain-model/retrain-model", "flows.retrain.retrain_model"),
                         ("span-report/span-report", "flows.report.span_report")):
        inspected = run([PREFECT, "deployment", "inspect", name], env, cwd=tmp_path)
        assert f"'entrypoint': '{module}'" in inspected, inspected
        assert "'pull_steps': []" in inspected or "'pull_steps': None" in inspected, inspected

    worker_log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "span-jobs"], env=env, cwd=tmp_path,
                              stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        params = {"inbox": str(inbox), "database": str(db), "model": str(tiny_model_dir), "settle_seconds": 0,
                  "device": "cpu"}
        watched = subprocess.run(
            [PREFECT, "deployment", "run", "extract-spans/extract-spans", "--params", json.dumps(params),
             "--watch", "--watch-timeout", "300"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=360)
        worker_log.flush()
        assert watched.returncode == 0, watched.stdout + watched.stderr + (tmp_path / "worker.log").read_text()
        assert "Completed" in watched.stdout + watched.stderr
    finally:
        stop(worker)
        worker_log.close()

    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("select count(*), count(distinct tweet_id) from spans").fetchone() == (25, 25)
    assert con.execute("select count(*) from processed_files where status = 'done'").fetchone() == (1,)
    con.close()

    # new labeled data: the event makes the retrain-model trigger create a run for that file
    labeled = tmp_path / "new-labels.csv"
    labeled.write_text("textID,text,selected_text,sentiment\nx1,so happy,happy,positive\n")
    run([SPAN_JOBS, "labeled-arrived", str(labeled)], env, cwd=tmp_path)
    parameters = retrain_run_parameters(env, timeout=90)
    assert parameters["new_data"] == str(labeled.resolve())  # added to the known data, not trained on alone
    assert "data" not in parameters  # the known data: $SPAN_JOBS_HOME/labeled on the worker


def retrain_run_parameters(env, timeout: float) -> dict:
    """Parameters of the first retrain-model flow run the server has, waiting for the trigger to fire."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = flow_runs_of(env, "retrain-model")
        if found:
            return found[0]["parameters"]
        time.sleep(2)
    raise AssertionError("no retrain-model flow run was created by the labeled-data trigger")


def flow_runs_of(env, flow_name: str) -> list[dict]:
    """The server's runs of one flow: id, state and parameters, read with Prefect's client."""
    script = (
        "import asyncio, json\n"
        "from prefect.client.orchestration import get_client\n"
        "from prefect.client.schemas.filters import FlowFilter, FlowFilterName\n"
        "async def main():\n"
        "    async with get_client() as client:\n"
        f"        runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[{flow_name!r}])))\n"
        "        print(json.dumps([{'id': str(r.id), 'state': r.state_type.value if r.state_type else None,\n"
        "                           'parameters': r.parameters} for r in runs], default=str))\n"
        "asyncio.run(main())\n"
    )
    return json.loads(run([sys.executable, "-c", script], env).strip().splitlines()[-1])


@pytest.mark.slow  # make test-slow; CI runs it (.ci/run)
def test_fan_out_one_flow_run_per_file_to_two_workers(prefect_server, tmp_path, tiny_model_dir):
    """extract-spans with fan_out dispatches one extract-file run per new file (dispatching again while
    they are pending adds none); two process workers of one pool share them; every row is stored once."""
    env = {**prefect_server, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
    inbox, db = tmp_path / "inbox", tmp_path / "spans.duckdb"
    inbox.mkdir()
    files = 6
    for f in range(files):
        pq.write_table(pa.table({"id": [f"f{f}r{i}" for i in range(40)],
                                 "text": [f"fanned out tweet {i} of file {f}" for i in range(40)]}),
                       inbox / f"part-{f}.parquet")
    run([PREFECT, "work-pool", "create", "span-jobs", "--type", "process"], env)
    run([PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", str(REPO / "deployments" / "prefect.yaml")],
        env, cwd=tmp_path)
    params = {"inbox": str(inbox), "database": str(db), "model": str(tiny_model_dir), "settle_seconds": 0,
              "device": "cpu", "fan_out": True}
    logs = [tmp_path / f"worker-{w}.log" for w in range(2)]
    workers = [subprocess.Popen([PREFECT, "worker", "start", "--pool", "span-jobs", "--limit", "1", "--name", f"w{w}"],
                                env=env, cwd=tmp_path, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True) for w, log in enumerate(logs)]
    try:
        for _ in range(2):  # a second dispatch adds no run for a file whose run is pending, running or done
            run([PREFECT, "deployment", "run", "extract-spans/extract-spans", "--params", json.dumps(params),
                 "--watch", "--watch-timeout", "300"], env, timeout=360, cwd=tmp_path)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            states = [r["state"] for r in flow_runs_of(env, "extract-file")]
            if len(states) >= files and all(s in ("COMPLETED", "FAILED", "CRASHED") for s in states):
                break
            time.sleep(2)
    finally:
        for worker in workers:
            stop(worker)
    assert states == ["COMPLETED"] * files, [log.read_text()[-3000:] for log in logs]
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("select count(*), count(distinct tweet_id) from spans").fetchone() == (files * 40, files * 40)
    assert con.execute("select count(*), count(distinct run_id) from processed_files where status = 'done'"
                       ).fetchone() == (files, files)  # one flow run per file
    con.close()
    ran = [log.read_text().count("for flow 'extract-file'") for log in logs]
    assert all(n > 0 for n in ran), ran  # both workers did work
