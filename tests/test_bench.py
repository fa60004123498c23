"""The GPU benchmark's CPU smoke mode (bench/gpu_speed.py --smoke): the code a lent GPU machine runs, checked
tiny here so that it works the day one is lent (bench/gpu.sh)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_smoke_runs_inference_and_training_on_cpu():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_speed.py"), "--smoke"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["device"] == "cpu"
    assert all(v["tweets_per_second"] > 0 for v in figures["inference"].values())
    assert all(v["samples_per_second"] > 0 for v in figures["training"].values())
