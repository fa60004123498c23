"""Promises that must hold when things go wrong: kills, concurrent runs, promotions mid-run.

Real subprocesses of the `span-jobs` command, real SIGKILLs, a real DuckDB file.
"""

import json
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from span_jobs.model import load_model_dir, save_model
from span_jobs.inbox import InboxFile, claim
from span_jobs.registry import Registry

SPAN_JOBS = str(Path(sys.executable).with_name("span-jobs"))


def make_inbox(inbox: Path, files: int, rows: int) -> set[str]:
    """Parquet files whose every 50th row is bad (empty text); returns all ids."""
    inbox.mkdir(parents=True, exist_ok=True)
    ids = set()
    for f in range(files):
        file_ids = [f"f{f}r{r}" for r in range(rows)]
        texts = ["" if r % 50 == 7 else f"row {r} of file {f} feels great today" for r in range(rows)]
        pq.write_table(pa.table({"id": file_ids, "text": texts}), inbox / f"part-{f:03d}.parquet")
        ids.update(file_ids)
    return ids


def extract_cmd(inbox, db, model, *extra):
    return [SPAN_JOBS, "extract", "--inbox", str(inbox), "--database", str(db), "--model", str(model),
            "--settle-seconds", "0", "--device", "cpu", *extra]


def check_exactly_once(db: Path, ids: set[str], files: int) -> None:
    con = duckdb.connect(str(db))  # read-write open: replays the WAL a killed run may have left
    try:
        stored = [r[0] for r in con.execute("select tweet_id from spans").fetchall()]
        quarantined = [r[0] for r in con.execute("select tweet_id from quarantine").fetchall()]
        assert len(stored) == len(set(stored)), "a tweet was stored twice"
        assert not set(stored) & set(quarantined), "a tweet is both stored and quarantined"
        assert len(quarantined) == len(set(quarantined))
        assert set(stored) | set(quarantined) == ids, "rows were lost"
        ledger = con.execute("select file_path, count(*), min(status) from processed_files group by file_path").fetchall()
        assert len(ledger) == files and all(n == 1 and status == "done" for _, n, status in ledger)
        per_file = con.execute("""
            select l.rows_in, l.rows_stored, l.rows_quarantined,
                   (select count(*) from spans s where s.source_file = l.file_path),
                   (select count(*) from quarantine q where q.source_file = l.file_path)
            from processed_files l""").fetchall()
        for rows_in, rows_stored, rows_quarantined, n_spans, n_quarantine in per_file:
            assert (rows_stored, rows_quarantined) == (n_spans, n_quarantine)
            assert rows_in == rows_stored + rows_quarantined
    finally:
        con.close()


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path, tiny_model_dir, crash_trials):
    inbox, db = tmp_path / "inbox", tmp_path / "spans.duckdb"
    files = 24
    # ~30 s of work on 2 cores: ten runs killed 1.5-6 s in (start-up ~1.5 s of it) each leave work to the next
    ids = make_inbox(inbox, files=files, rows=1200)
    rng = random.Random(1234)
    killed_mid_run = 0
    for _ in range(crash_trials):
        process = subprocess.Popen(extract_cmd(inbox, db, tiny_model_dir), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.5, 6.0))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            killed_mid_run += 1
        process.wait()
    assert killed_mid_run >= crash_trials // 2, "the kills must land while the job is running"
    final = subprocess.run(extract_cmd(inbox, db, tiny_model_dir), capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    check_exactly_once(db, ids, files)
    leftovers = list((Path(f"{db}.work") / "staging").glob("*.parquet"))
    assert leftovers == [] or all(p.stat().st_size > 0 for p in leftovers)  # stale stage files are harmless


def test_two_runs_at_once_never_process_a_file_twice(tmp_path, tiny_model_dir):
    inbox, db = tmp_path / "inbox", tmp_path / "spans.duckdb"
    files = 12
    ids = make_inbox(inbox, files=files, rows=100)
    runs = [subprocess.Popen(extract_cmd(inbox, db, tiny_model_dir), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [r.communicate(timeout=600) for r in runs]
    for r, (out, err) in zip(runs, outputs):
        assert r.returncode == 0, err
    check_exactly_once(db, ids, files)
    done_lines = [line for out, _ in outputs for line in out.splitlines() if line.startswith("done")]
    assert len(done_lines) == files  # each file finished by exactly one of the two runs


def test_claim_excludes_a_second_claimant_in_the_same_process(tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"x")
    f = InboxFile.of(tmp_path / "a.parquet")
    db = tmp_path / "db.duckdb"
    with claim(f, db) as first:
        assert first
        seen = []
        thread = threading.Thread(target=lambda: seen.append(claim(f, db).__enter__()))
        thread.start()
        thread.join()
        assert [bool(c) for c in seen] == [False]
    with claim(f, db) as again:
        assert again  # released when the holder is done


def test_a_running_extraction_keeps_its_model_version_through_a_promotion(tmp_path, tiny_model_dir):
    registry = Registry(tmp_path / "registry")
    first = load_model_dir(tiny_model_dir)
    save_model(first, registry.new_model_dir("model-a"))
    registry.promote("model-a", 0.1)
    second = load_model_dir(tiny_model_dir)
    second.metadata.version = "model-b"
    save_model(second, registry.new_model_dir("model-b"))
    version_a = load_model_dir(registry.new_model_dir("model-a")).version

    inbox, db = tmp_path / "inbox", tmp_path / "spans.duckdb"
    make_inbox(inbox, files=8, rows=150)
    run = subprocess.Popen(extract_cmd(inbox, db, "promoted", "--registry", str(registry.root)),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.poll() is None:  # promote once the run is under way
        if (Path(f"{db}.work") / "staging").exists():
            break
        time.sleep(0.05)
    registry.promote("model-b", 0.2)
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("select distinct model_version from spans").fetchall() == [(version_a,)]
    con.close()
    make_inbox(tmp_path / "inbox2", files=1, rows=5)
    later = subprocess.run(extract_cmd(tmp_path / "inbox2", db, "promoted", "--registry", str(registry.root)),
                           capture_output=True, text=True, timeout=300)
    assert "model model-b" in later.stdout


def test_registry_survives_kills_during_promotion(tmp_path, tiny_model_dir):
    registry = Registry(tmp_path / "registry")
    loaded = load_model_dir(tiny_model_dir)
    for version in ("model-a", "model-b"):
        save_model(loaded, registry.new_model_dir(version))
    registry.promote("model-a", 0.1)
    script = textwrap.dedent(f"""
        from span_jobs.registry import Registry
        r = Registry({str(registry.root)!r})
        i = 0
        while True:
            r.promote(("model-a", "model-b")[i % 2], 0.5)
            i += 1
    """)
    rng = random.Random(7)
    for _ in range(10):
        p = subprocess.Popen([sys.executable, "-c", script])
        time.sleep(rng.uniform(0.6, 1.5))
        p.send_signal(signal.SIGKILL)
        p.wait()
        record = json.loads(registry.pointer.read_text())  # never torn
        assert record["version"] in ("model-a", "model-b")
        assert Path(record["path"]).is_dir()
        assert load_model_dir(registry.champion_dir()).version  # and it loads


def test_model_dirs_load_only_safetensors(tmp_path, tiny_model_dir):
    import shutil

    import torch

    from span_jobs.errors import ModelError

    bad = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, bad)
    (bad / "model.safetensors").unlink()
    torch.save({"weights": 1}, bad / "pytorch_model.bin")
    with pytest.raises(ModelError, match="safetensors"):
        load_model_dir(bad)
