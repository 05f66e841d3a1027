# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make demo   - create ./.venv, install sagelm, judge the bundled demo pairs
#   make test   - create ./.venv, install sagelm with its test tools, run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench system-deps learn

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sagelm demo $(ARGS)

# espeak-ng speaks the synthetic training data of the learning test and example (Debian/Ubuntu package);
# chromium opens the arena's report.html in its browser test.
system-deps:
	@command -v espeak-ng >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q espeak-ng >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q espeak-ng >/dev/null; }; }
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; }; }

test: $(STAMP) system-deps
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/python -m pytest -q $(ARGS)

# The README's training example: a tiny random judge learns gender instruction following on the CPU.
learn: $(STAMP) system-deps
	$(VENV)/bin/sagelm synth gender runs/gender --train-pairs 1000 --overwrite
	$(VENV)/bin/sagelm tiny-model runs/tiny --hidden-size 128
	$(VENV)/bin/sagelm train configs/gender_tiny.yaml
	rm -f runs/heldout.jsonl
	$(VENV)/bin/sagelm judge --model runs/gender-judge --data runs/gender/heldout.json --both-orders \
	  --verdict-only --batch-size 16 --output runs/heldout.jsonl
	$(VENV)/bin/sagelm eval runs/heldout.jsonl

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/bench_judge.py
	$(VENV)/bin/python benchmarks/bench_eval.py
