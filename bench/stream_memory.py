"""Pipeline memory and throughput, isolated from the model: extract-spans with the full-text baseline.

Writes synthetic inboxes of 100k and 1M tweets (one Parquet file each: streaming must keep memory
flat however large a file is), runs the pipeline on each in a fresh subprocess, and prints peak RSS,
tweets/s, and the share of time spent loading DuckDB.

    python bench/stream_memory.py [--sizes 100000 1000000] [--workdir /tmp/span-bench]
"""

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_inbox(inbox: Path, n: int, row_group: int = 50_000) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    words = "so happy today with my friends at the beach but work tomorrow is awful lol".split()
    with pq.ParquetWriter(inbox / "tweets.parquet", pa.schema([("id", pa.string()), ("text", pa.string()),
                                                               ("sentiment", pa.string())])) as writer:
        for start in range(0, n, row_group):
            ids = [f"t{i:09d}" for i in range(start, min(n, start + row_group))]
            texts = [" ".join(words[(i * 7 + k) % len(words)] for k in range(4 + i % 12)) for i in range(len(ids))]
            sentiments = [("positive", "negative", "neutral", None)[i % 4] for i in range(len(ids))]
            writer.write_table(pa.table({"id": ids, "text": texts, "sentiment": sentiments}))


def child(inbox: str, database: str) -> None:
    """Runs in a fresh process so its peak RSS is this run's alone."""
    from span_jobs.extract import FullTextExtractor
    from span_jobs.pipeline import run_extract

    started = time.perf_counter()
    summary = run_extract(inbox, database, FullTextExtractor())
    seconds = time.perf_counter() - started
    f = summary.files[0]
    print(json.dumps({
        "rows": summary.rows_in, "stored": summary.rows_stored, "seconds": seconds,
        "tweets_per_second": summary.rows_in / seconds, "load_seconds": f.load_seconds,
        "model_seconds": f.model_seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="span-bench-"))
    results = {}
    for n in args.sizes:
        run_dir = workdir / f"n{n}"
        shutil.rmtree(run_dir, ignore_errors=True)
        write_inbox(run_dir / "inbox", n)
        out = subprocess.run([sys.executable, __file__, "--child", str(run_dir / "inbox"), str(run_dir / "spans.duckdb")],
                             capture_output=True, text=True, check=True)
        results[n] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[n]
        print(f"{n:>9,} tweets: {r['tweets_per_second']:>9,.0f} tweets/s  peak RSS {r['peak_rss_mb']:7.1f} MB  "
              f"DuckDB load {100 * r['load_seconds'] / r['seconds']:4.1f}% of {r['seconds']:.1f}s  "
              f"(extractor {100 * r['model_seconds'] / r['seconds']:.1f}%)")
    if len(args.sizes) >= 2:
        small, large = results[min(args.sizes)], results[max(args.sizes)]
        growth = large["peak_rss_mb"] / small["peak_rss_mb"] - 1
        print(f"peak RSS at {max(args.sizes):,} vs {min(args.sizes):,}: {100 * growth:+.1f}% (target within 10%)")
    shutil.rmtree(workdir, ignore_errors=True) if args.workdir is None else None


if __name__ == "__main__":
    main()
