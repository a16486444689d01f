# Two commands for a new machine with only python3: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# a CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test lint docs tutorials clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/kdcpt run --out results/pbmc

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/python -m pip install -q ruff
	$(BIN)/ruff check src tests benchmarks

# documentation: offline, warnings are errors; notebooks are rendered as committed (not executed)
docs: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[doc]"
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html
	@echo "open docs/_build/html/index.html"

# re-execute the tutorial notebooks in place (epochs: KDCPT_TUTORIAL_EPOCHS)
tutorials: $(STAMP)
	cd tutorials && ../$(BIN)/python run_notebooks.py *.ipynb

clean:
	rm -rf results docs/_build docs/generated
