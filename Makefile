# From EM to Diffusion: build the book and run the tests.
#   make book   create the virtual env if needed, execute the chapters, build the site into _build/html
#   make test   the whole test suite, including a build of the book with warnings as errors
#   make unit   the unit tests alone (no kernels, no notebooks): a minute
# VENV=path overrides where the virtual env lives (default: .venv); JOBS=n how many processes run
# tests and chapters at once (default: 2, this course's reference machine has two cores).

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.coursepkg-installed
JB_FLAGS := -W --keep-going
JOBS ?= 2

.PHONY: book test unit chapters exercises solutions clean help

help:
	@echo "make book       build the site into _build/html (warnings are errors)"
	@echo "make test       run the whole test suite (unit tests, notebooks, book build)"
	@echo "make unit       run the unit tests alone (no kernels, no notebooks)"
	@echo "make exercises  regenerate exercises/ from solutions/"
	@echo "make solutions  re-execute solutions/ in place (stores the outputs nbval compares)"
	@echo "make clean      remove _build and caches (keeps the virtual env)"

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[book,dev]"
	touch $(STAMP)

# optional: execute the chapters JOBS at a time into the build's cache, so that a following build only
# renders them (`make chapters book`). Not part of `book` or `test`: in two CI runs one chapter's
# execution hung (nbclient waiting on an idle kernel); the build's own serial execution has never hung.
chapters: $(STAMP)
	$(PY) -m coursepkg execute-book --jobs $(JOBS)

book: $(STAMP)
	$(VENV)/bin/jupyter-book build . $(JB_FLAGS)

unit: $(STAMP)
	$(VENV)/bin/ruff check coursepkg tests benchmarks conftest.py _ext tools
	$(PY) -m pytest -m "not slow" -n $(JOBS) --dist loadscope --no-loadscope-reorder tests

test: $(STAMP)
	$(VENV)/bin/ruff check coursepkg tests benchmarks conftest.py _ext tools
	$(PY) -m pytest -n $(JOBS) --dist loadscope --no-loadscope-reorder
	$(MAKE) --no-print-directory book

exercises: $(STAMP)
	$(PY) -m coursepkg exercises

solutions: $(STAMP)
	$(PY) -m coursepkg execute solutions/*.ipynb

clean:
	rm -rf _build .pytest_cache
