#!/usr/bin/env bash
# GPU figures on one machine with a CUDA GPU and this repo: installs nothing the machine lacks
# (torch, transformers, sentencepiece, pyarrow, pandas, tqdm and vaderSentiment must be there —
# carry missing ones as wheels; the project itself is put on PYTHONPATH).
# Under 5 minutes on one H200. Prints inference tweets/s and training samples/s for a
# t5-base-shaped model (random weights) in bf16, at several batch sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 python3 bench/gpu_speed.py "$@"
