# Compressing Neural Networks: build the book and test everything.
#   make book   create .venv if needed, install, build the HTML (warnings are errors)
#   make test   unit tests, every notebook under nbval, bibliography and hygiene checks
#   make lab    open JupyterLab on the book
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_SYS ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH := torch==2.13.0

.PHONY: help install book test lab clean

help:
	@echo "make book   build the HTML book into _build/html (creates .venv on first use)"
	@echo "make test   run unit tests, nbval on every notebook, bibliography and hygiene checks"
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

test: $(STAMP)
	$(PYTHON) -m pytest --nbval-lax --nbval-cell-timeout=600 tests book

lab: $(STAMP)
	$(VENV)/bin/jupyter lab book

clean:
	rm -rf _build
