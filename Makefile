# From EM to Diffusion: build the book and run the tests.
#   make book   create the virtual env if needed, execute the chapters, build the site into _build/html
#   make test   the whole test suite, including a build of the book with warnings as errors
# VENV=path overrides where the virtual env lives (default: .venv).

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.coursepkg-installed
JB_FLAGS := -W --keep-going

.PHONY: book test unit notebooks exercises solutions clean help

help:
	@echo "make book       build the site into _build/html (warnings are errors)"
	@echo "make test       run the whole test suite (unit tests, notebooks, book build)"
	@echo "make exercises  regenerate exercises/ from solutions/"
	@echo "make solutions  re-execute solutions/ in place (stores the outputs nbval compares)"
	@echo "make clean      remove _build and caches (keeps the virtual env)"

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[book,dev]"
	touch $(STAMP)

book: $(STAMP)
	$(VENV)/bin/jupyter-book build . $(JB_FLAGS)

test: $(STAMP)
	$(VENV)/bin/ruff check coursepkg tests benchmarks conftest.py
	$(PY) -m pytest
	$(MAKE) --no-print-directory book

exercises: $(STAMP)
	$(PY) -m coursepkg exercises

solutions: $(STAMP)
	$(PY) -m coursepkg execute solutions/*.ipynb

clean:
	rm -rf _build .pytest_cache
