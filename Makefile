# Two entry points on a fresh machine: `make demo` and `make test` (each installs first).
VENV ?= .venv
PY := $(VENV)/bin/python
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install demo test test-slow test-all bench

install: $(VENV)/.installed

# torch==2.13.0 first: it is the CPU build on this disk; a bare "torch" pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(VENV)/bin/span-jobs demo

test: install
	$(PY) -m pytest --durations=15

# the multi-process scale-out tests (workers on a lake, a PostgreSQL restart, Prefect fan-out):
# minutes each, so outside the default run; CI runs them too (.ci/run)
test-slow: install
	$(PY) -m pytest --run-slow -m slow

test-all: install
	$(PY) -m pytest --run-slow --crash-trials 30

# make bench [MODEL=path/to/model]: the shipped default model unless another is named (train_speed.py
# trains its own: the default recipe, this code against an earlier revision)
MODEL ?= default
bench: install
	$(PY) bench/quality.py --model $(MODEL)
	$(PY) bench/throughput.py --model $(MODEL)
	$(PY) bench/predict_speed.py --model $(MODEL)
	$(PY) bench/train_speed.py
	$(PY) bench/stream_memory.py
