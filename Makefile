# The README's two commands: `make demo` (the main job) and `make test` (what CI runs).
# Both create or reuse the virtual environment in .venv; nothing else needs installing by hand.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of PyTorch; set TORCH_SPEC=torch for a CUDA machine.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= runs/demo

.PHONY: demo test venv test-env llama-cpp clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

venv: $(VENV)/.installed

test-env: $(VENV)/.installed-test

demo: venv
	$(BIN)/tinyllm doctor
	$(BIN)/tinyllm train --preset demo --data builtin --out $(DEMO_OUT) --force
	@echo "== a sample (greedy) =="
	$(BIN)/tinyllm generate $(DEMO_OUT) --prompt "Mira walked to the harbour" --temperature 0 -n 80
	@echo "== a sample (sampled, seed 1) =="
	$(BIN)/tinyllm generate $(DEMO_OUT) --prompt "One rainy morning" --seed 1 -n 80
	@echo "== a chat answer =="
	printf 'Where does Mira live?\n' | $(BIN)/tinyllm chat $(DEMO_OUT) --temperature 0 -n 60
	@echo "demo done: the checkpoint is in $(DEMO_OUT) (try: $(BIN)/tinyllm chat $(DEMO_OUT))"

# llama.cpp's own tools, built once from the llama-cpp-python sdist into ~/.cache/tinyllm (cached:
# a second run returns at once). The GGUF tests run them, so `make test` builds them first.
llama-cpp: venv
	$(BIN)/python tools/install_llama_cpp.py

test: test-env llama-cpp
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
