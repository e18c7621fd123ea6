# Two commands a user needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint format notebooks book bench recordings clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Runtime install: minisd and what it needs to run.
$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# Test install: the references (diffusers, transformers) and the checkers, on top.
$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test,notebooks]"
	touch $@ $(VENV)/.runtime

demo: $(VENV)/.runtime
	$(BIN)/python -m minisd demo

lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -n 2 --dist loadgroup

format: $(VENV)/.test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Run every notebook in place (outputs committed, so figures show on a code host); the GIF lands beside them.
notebooks: $(VENV)/.test
	cd notebooks && ../$(BIN)/jupyter execute --inplace [0-9][0-9]_*.ipynb

# The executed notebooks as a static site in site/ (not committed): open site/index.html.
book: $(VENV)/.test
	$(BIN)/python notebooks/make_book.py site

# minisd against diffusers on this machine: benchmarks/RESULTS.md (about 15 minutes on a 2-core CPU).
bench: $(VENV)/.test
	$(BIN)/python benchmarks/bench.py

# minisd-tiny's reference recordings (fp32, CPU), which tests/test_reference.py regenerates and compares.
recordings: $(VENV)/.runtime
	mkdir -p weights/recordings
	$(BIN)/python -m minisd record "a red circle on the left" --out weights/recordings/minisd-tiny-red-circle.safetensors
	$(BIN)/python -m minisd record "a blue square above a yellow triangle" --scheduler ddim --steps 25 \
		--out weights/recordings/minisd-tiny-ddim-pair.safetensors

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis site
