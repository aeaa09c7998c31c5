# Compressing Neural Networks: build the book and test everything.
#   make book   create .venv if needed, install, build the HTML (warnings are errors); executes
#               only the notebooks that are not in _build/.jupyter_cache
#   make test   unit tests, every notebook under nbval, bibliography and hygiene checks; every
#               notebook that passes is written into _build/.jupyter_cache (tests/conftest.py),
#               so `make book` after `make test` executes each notebook once in all
#   make pdf    the whole book as one PDF (single-page HTML printed by headless Chromium)
#   make lab    open JupyterLab on the book
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_SYS ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH := torch==2.13.0

PDF := _build/pdf/compressing-neural-networks.pdf
CHROMIUM ?= $(shell command -v chromium || command -v chromium-browser || command -v google-chrome)

.PHONY: help install book test pdf lab clean

help:
	@echo "make book   build the HTML book into _build/html (creates .venv on first use)"
	@echo "make test   run unit tests, nbval on every notebook, bibliography and hygiene checks"
	@echo "make pdf    build $(PDF) (needs Chromium, e.g. Debian's chromium package)"
	@echo "make lab    open JupyterLab on the book"
	@echo "make clean  remove _build (keeps .venv)"

$(PYTHON):
	$(PYTHON_SYS) -m venv $(VENV)

# torch first, pinned: it is a local CPU wheel here, and letting pip resolve an unpinned torch
# would pull gigabytes of CUDA packages.
$(STAMP): pyproject.toml | $(PYTHON)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet $(TORCH)
	$(PYTHON) -m pip install --quiet -e '.[book,test]'
	touch $(STAMP)

install: $(STAMP)

book: $(STAMP)
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "Open _build/html/index.html in a browser."

# `tests` must stay among the paths: its conftest.py caches the notebooks nbval executed.
test: $(STAMP)
	$(PYTHON) -m pytest --nbval-lax --nbval-cell-timeout=600 --durations=40 tests book

# The single-page build reuses the notebooks executed by `make book` (same cache). Its page lives
# at book/intro.html but links its assets as if it were at the top, so it is printed from a copy
# there. Chromium runs offline and waits (virtual time) for MathJax to typeset every equation.
pdf: $(STAMP)
	@test -n "$(CHROMIUM)" || { echo "make pdf needs Chromium: apt-get install chromium"; exit 1; }
	$(VENV)/bin/jupyter-book build . --builder singlehtml -W -n --keep-going
	cp _build/singlehtml/book/intro.html _build/singlehtml/whole-book.html
	mkdir -p $(dir $(PDF))
	"$(CHROMIUM)" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
		--disable-background-networking --disable-component-update --disable-sync \
		--user-data-dir="$$(mktemp -d)" --virtual-time-budget=120000 --no-pdf-header-footer \
		--print-to-pdf=$(PDF) "file://$(CURDIR)/_build/singlehtml/whole-book.html" 2>/dev/null
	$(PYTHON) book/_ext/pdf_contents.py _toc.yml $(PDF)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab book

clean:
	rm -rf _build
