"""The default recipe's training speed on this machine, this code against an earlier revision, one run.

Each side runs `TrainConfig.from_recipe("default")` as `span-jobs train --recipe default` would (span
teacher, its outputs, the student, temperature choice, calibration), on the first --rows training
tweets for --epochs student epochs, in a fresh process with 2 torch threads, one after the other:

  before: the code of --baseline (a git revision; default: the last one before the faster recipe)
  now:    the working tree

Prints each side's seconds (teacher and its outputs; one student epoch with its validation; the
whole run), samples/s (training tweets x epochs / whole run) and the ratio now/before. The Jaccard
printed is the small run's own validation figure, a sanity check only: quality is judged on full runs.

    python bench/train_speed.py [--rows 3000] [--epochs 2] [--baseline b7f6568]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tweets" / "labeled.csv"

RUN = """
import json, sys, time
import torch
torch.set_num_threads(2)
import span_jobs
try:  # what the `span-jobs` command does first, in code that has it
    from span_jobs.runtime import keep_freed_memory
    keep_freed_memory()
except ImportError:
    pass
from span_jobs.data import read_labeled
from span_jobs.train import TrainConfig, train
data_path, out, rows, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
data = read_labeled(data_path)
config = TrainConfig.from_recipe("default", limit=rows, epochs=epochs, device="cpu")
started = time.perf_counter()
result = train(data, out, config)
print(json.dumps({"code": span_jobs.__file__, "seconds": time.perf_counter() - started,
                  "epoch_ends": [h["seconds"] for h in result.history], "jaccard": result.validation["jaccard"]}))
"""


def run_side(code_dir: Path, data: Path, rows: int, epochs: int, scratch: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code_dir), "OMP_NUM_THREADS": "2"}
    out_dir = scratch / f"model-{code_dir.name}"
    done = subprocess.run([sys.executable, "-c", RUN, str(data), str(out_dir), str(rows), str(epochs)],
                          env=env, capture_output=True, text=True, cwd=scratch)
    if done.returncode:
        raise SystemExit(f"the {code_dir.name} side failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    if not figures["code"].startswith(str(code_dir)):
        raise SystemExit(f"ran {figures['code']}, not the code in {code_dir}")
    ends = figures["epoch_ends"]  # seconds since the start at each epoch's end: the first one includes the teacher
    figures["epoch_seconds"] = ends[-1] - ends[-2]
    figures["teacher_seconds"] = ends[0] - figures["epoch_seconds"]
    figures["samples_per_s"] = rows * epochs / figures["seconds"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--baseline", default="b7f6568")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the teacher's time is the first epoch's less a later one's")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        before_dir = scratch / "before"
        before_dir.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "span_jobs"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before_dir)], input=archive, check=True)
        sides = {"before": run_side(before_dir, args.data, args.rows, args.epochs, scratch),
                 "now": run_side(ROOT, args.data, args.rows, args.epochs, scratch)}
    print(f"default recipe, first {args.rows} training tweets, {args.epochs} epochs, 2 threads; "
          f"before = {args.baseline}, now = working tree")
    print("| side | teacher s | student epoch s | whole run s | samples/s | Jaccard (small run) |")
    print("|---|---|---|---|---|---|")
    for name, f in sides.items():
        print(f"| {name} | {f['teacher_seconds']:.1f} | {f['epoch_seconds']:.1f} | {f['seconds']:.1f} | "
              f"{f['samples_per_s']:.1f} | {f['jaccard']:.4f} |")
    before, now = sides["before"], sides["now"]
    print(f"now/before: samples/s {now['samples_per_s'] / before['samples_per_s']:.2f}x, teacher "
          f"{before['teacher_seconds'] / now['teacher_seconds']:.2f}x, student epoch "
          f"{before['epoch_seconds'] / now['epoch_seconds']:.2f}x")


if __name__ == "__main__":
    main()
