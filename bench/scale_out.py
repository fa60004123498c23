"""Scale-out figures: 1 worker against 2 workers at once on one inbox, on a lake (DuckLake on a
PostgreSQL catalog started here) and, for reference, on one DuckDB file.

Each way runs real `span-jobs extract` processes on the same freshly written inbox; the figure
is tweets/s over the wall time until the last worker is done, and the ratio 2 workers / 1 worker
measured in the same run; the cores are split between the workers (OMP_NUM_THREADS). With the
full-text extractor it isolates the pipeline and the store; with a model it shows what the model
stage leaves. Also printed: lake commits (DuckLake snapshots) and the retries our own code made
(lake attach and schema creation racing).

    python bench/scale_out.py [--files 16] [--rows 2000] [--model default] [--model-rows 300]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_lake import PG_BIN, Cluster, _as_postgres  # noqa: E402  (the tests' own PostgreSQL cluster)

SPAN_JOBS = str(Path(sys.executable).with_name("span-jobs"))
WORDS = "so happy today with my friends at the beach but work tomorrow is awful lol".split()


def write_inbox(inbox: Path, files: int, rows: int) -> int:
    inbox.mkdir(parents=True)
    for f in range(files):
        ids = [f"f{f}r{i}" for i in range(rows)]
        texts = [" ".join(WORDS[(i * 7 + k + f) % len(WORDS)] for k in range(4 + i % 12)) for i in range(rows)]
        pq.write_table(pa.table({"id": ids, "text": texts}), inbox / f"part-{f:03d}.parquet")
    return files * rows


def run_workers(n: int, inbox: Path, database: str, model: str, env: dict) -> tuple[float, str]:
    # the machine's cores split between the workers: more torch threads than cores only slow it down
    env = {**env, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // n))}
    started = time.perf_counter()
    workers = [subprocess.Popen([SPAN_JOBS, "-v", "extract", "--inbox", str(inbox), "--database", database,
                                 "--model", model, "--settle-seconds", "0", "--device", "cpu"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(n)]
    logs = []
    for w in workers:
        out, err = w.communicate()
        if w.returncode != 0:
            raise RuntimeError(err[-2000:])
        logs.append(err)
    return time.perf_counter() - started, "\n".join(logs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--model", default="default")
    parser.add_argument("--model-rows", type=int, default=300, help="rows per file for the runs with the model")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="span-jobs-scale-"))
    os.chmod(root, 0o755)
    cluster = Cluster(root / "pg")
    (root / "pg").mkdir()
    if os.geteuid() == 0:
        import shutil

        shutil.chown(root / "pg", "postgres")
    subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(cluster.data), "-A", "trust", "--no-sync",
                                 "-U", "postgres"]), check=True, capture_output=True)
    cluster.start()
    print(f"machine: {os.cpu_count()} cores; {args.files} files per inbox")
    try:
        rows = []
        cases = [("full text", "full-text-baseline", args.rows), (f"model {args.model}", args.model, args.model_rows)]
        for label, model, per_file in cases:
            for store in ("lake", "duckdb file"):
                figures = {}
                for n in (1, 2):
                    case = root / f"{label}-{store}-{n}".replace(" ", "_")
                    tweets = write_inbox(case / "inbox", args.files, per_file)
                    env = {**os.environ, "SPAN_JOBS_HOME": str(case / "home"), "SPAN_JOBS_LAKE_DATA": str(case / "lake")}
                    if store == "lake":
                        name = f"lake_{len(rows)}_{n}"
                        subprocess.run(_as_postgres([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p",
                                                     str(cluster.port), "-U", "postgres", name]), check=True)
                        database = f"ducklake:postgres:{cluster.dsn(name)}"
                    else:
                        database = str(case / "spans.duckdb")
                    seconds, log = run_workers(n, case / "inbox", database, model, env)
                    figures[n] = tweets / seconds
                    retries = log.count("retrying") + log.count("conflicted")
                    commits = ""
                    if store == "lake":
                        from span_jobs.store import connect

                        os.environ["SPAN_JOBS_HOME"] = str(case / "home")
                        with connect(database, read_only=True) as con:
                            commits = con.execute("select count(*) from ducklake_snapshots('lake')").fetchone()[0]
                    print(f"{label:<22} {store:<12} {n} worker(s): {tweets / seconds:8.1f} tweets/s "
                          f"({seconds:.1f} s, lake commits {commits or '-'}, our retries {retries})", flush=True)
                rows.append((label, store, figures[1], figures[2], figures[2] / figures[1]))
        print("\n| extractor | store | 1 worker (tweets/s) | 2 workers (tweets/s) | ratio |\n|---|---|---|---|---|")
        for label, store, one, two, ratio in rows:
            print(f"| {label} | {store} | {one:.1f} | {two:.1f} | {ratio:.2f}x |")
    finally:
        cluster.pg_ctl("-m", "immediate", "stop")


if __name__ == "__main__":
    main()
