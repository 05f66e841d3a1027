# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make demo   - create ./.venv, install sagelm, judge the bundled demo pairs
#   make test   - create ./.venv, install sagelm with its test tools, run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sagelm demo $(ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/python -m pytest -q $(ARGS)

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/bench_judge.py
	$(VENV)/bin/python benchmarks/bench_eval.py
