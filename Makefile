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
	$(BIN)/pip install --quiet -e ".[genai-builder]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

venv: $(VENV)/.installed

test-env: $(VENV)/.installed-test

# The whole pipeline: train the demo preset (it ends with perplexity and world-fact accuracy), show
# what it writes and ask it three questions in one chat (the last in a phrasing it never trained
# on), then make every format (int8 / int4 rtn and GPTQ checkpoints, ONNX, GGUF, llama-quantize's
# Q4_0) and bench them all on the validation text. Artifacts are cached in
# $(DEMO_OUT)/bench/artifacts by content hash.
demo: venv llama-cpp
	$(BIN)/tinyllm doctor
	$(BIN)/tinyllm train --preset demo --data builtin --out $(DEMO_OUT) --force
	@echo "== a sample (greedy) =="
	$(BIN)/tinyllm generate $(DEMO_OUT) --prompt "Mira walked to the harbour" --temperature 0 -n 80
	@echo "== a sample (sampled, seed 1) =="
	$(BIN)/tinyllm generate $(DEMO_OUT) --prompt "One rainy morning" --seed 1 -n 80
	@echo "== three questions in one chat (greedy) =="
	printf 'Where does Mira live?\nWhat is the weather like in Åsbury in winter?\nWhat pet does José own?\n' \
		| $(BIN)/tinyllm chat $(DEMO_OUT) --temperature 0 --repetition-penalty 1 -n 60
	@echo "== every format, measured =="
	$(BIN)/tinyllm bench $(DEMO_OUT) --formats all --out $(DEMO_OUT)/bench
	@echo "demo done: checkpoint in $(DEMO_OUT), report in $(DEMO_OUT)/bench/report.md (try: $(BIN)/tinyllm chat $(DEMO_OUT))"

# llama.cpp's own tools, built once from the llama-cpp-python sdist into ~/.cache/tinyllm (cached:
# a second run returns at once). The GGUF tests run them, so `make test` builds them first.
llama-cpp: venv
	$(BIN)/tinyllm llama-cpp install

test: test-env llama-cpp
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
