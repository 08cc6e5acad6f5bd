# kd-companion: the two commands are `make book` and `make test`.
#
#   make setup              .venv (pinned requirements, kdutils editable, a Jupyter
#                           kernel), system packages (apt), MathJax for offline math
#   make book               papermill -> _build/$(PROFILE)/executed, then Jupyter Book
#                           renders those copies (no second execution)
#   make book PROFILE=smoke the same with the tiny profile
#   make book JOBS=1        one notebook at a time (default: one per core, each
#                           with THREADS=1 thread, so results do not depend on JOBS)
#   make test               ruff, unit tests, the wheel installed and used outside
#                           the checkout, smoke notebooks (papermill, from an empty
#                           cache), nbval re-execution with the runs they trained,
#                           book with warnings as errors, headless-browser check
#   make reproduce          the survey's Table 1 (PROFILE, SEEDS="0 1 2 3 4"),
#                           resumable; TUNE=1 tunes each method on validation first
#   make bench              bench/bench_speed.py: kdutils' loop vs the usual KD loop
#                           (BENCH_ARGS="--device cuda --profile")
#   make bench-parallel     bench/book_parallel.py: the book's runs serial vs JOBS
#   make dist               the wheel and the sdist of kdutils, into dist/
#   make clean / distclean  remove _build / also .venv, .cache, _offline
#
# Every target is incremental: a notebook is re-executed only when it or a file
# under kdutils/ changed; `make test` always executes the smoke notebooks anew.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.SUFFIXES:
MAKEFLAGS += --no-builtin-rules
.DEFAULT_GOAL := help

PROFILE ?= quick
# Notebooks executed at once, and the intra-op threads of each kernel (so of
# every run it trains). A run's floating-point result depends on its thread
# count, never on how many runs train beside it: THREADS stays 1 whatever JOBS
# is, so `make book JOBS=1` and `JOBS=8` give the same numbers. The thread count
# is recorded in every run's provenance.
JOBS ?= $(shell nproc 2>/dev/null || echo 1)
THREADS ?= 1
# Where kdutils caches teachers and finished runs (read by the package).
KD_CACHE_DIR ?= $(CURDIR)/.cache/kdutils
export KD_CACHE_DIR

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A kernel registered inside the venv, so papermill runs the venv's python.
KERNEL ?= kdutils
CHROMIUM ?= /usr/bin/chromium
BUILD ?= _build

# The book's chapters, in order: the notebooks that _toc.yml lists.
NOTEBOOKS ?= $(patsubst %,%.ipynb,$(shell sed -n 's/^ *- file: *\(notebooks\/[^ ]*\) *$$/\1/p' _toc.yml))
PKG_FILES := $(shell find kdutils -type f ! -path '*/__pycache__/*' ! -name '*.py[co]' 2>/dev/null)
LINT_PATHS ?= $(wildcard kdutils tests bench scripts notebooks)

# Per-profile build tree:
#   executed/notebooks/NN.ipynb  papermill outputs (executed copies)
#   src/                         assembled Jupyter Book source
#   _build/html/                 the rendered book
PROFILE_DIR = $(BUILD)/$(PROFILE)
EXEC_DIR = $(PROFILE_DIR)/executed
SRC_DIR = $(PROFILE_DIR)/src
HTML_DIR = $(PROFILE_DIR)/_build/html
EXECUTED = $(patsubst %,$(EXEC_DIR)/%,$(NOTEBOOKS))
GEN_DIR := $(BUILD)/generated
GEN_STAMP := $(GEN_DIR)/.stamp
JB_FLAGS ?=

# MathJax 3 from the npm registry, unpacked into a git-ignored folder that Sphinx
# copies into the built book's _static/mathjax/ (html_extra_path in _config.yml),
# so equations render without the network.
MATHJAX_VERSION := 3.2.2
MATHJAX_SHA256 := 1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09
MATHJAX_TGZ := .cache/npm/mathjax-$(MATHJAX_VERSION).tgz
MATHJAX_DIR := _offline/_static/mathjax
MATHJAX_STAMP := $(MATHJAX_DIR)/.version-$(MATHJAX_VERSION)
# The one combined component the book loads (TeX input, all extensions, CommonHTML
# output, its woff fonts), and what MathJax's menu may load on demand (renderer
# switch, accessibility); not the other combined bundles.
MATHJAX_FILES := tex-chtml-full.js core.js loader.js startup.js \
	input output ui a11y sre adaptors

SETUP_STAMP := $(VENV)/.kd-setup-stamp
# Tools run as `python -m` / `python -c` of the venv (no reliance on script shebangs).
JB := $(PY) -c 'import sys; from jupyter_book.cli.main import main; \
	sys.argv[0] = "jupyter-book"; sys.exit(main())'
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
TIMED := bash scripts/timed
TEST_TIMINGS := $(BUILD)/test-timings.txt

.PHONY: help setup sysdeps book executed assemble reproduce bench bench-parallel dist clean distclean \
	test test-lint test-unit test-install test-notebooks test-nbval test-book test-browser

help:
	@sed -n '1,/^$$/{/^#/p}' Makefile | sed 's/^# \{0,1\}//'

# ---------------------------------------------------------------- setup

setup: sysdeps $(SETUP_STAMP) $(MATHJAX_STAMP)

$(SETUP_STAMP): requirements.txt $(wildcard pyproject.toml)
	@test -x $(PY) || { echo "creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
ifneq ($(wildcard pyproject.toml),)
	$(PY) -m pip install --disable-pip-version-check -q -e .
endif
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) \
		--display-name "Python 3 (kdutils)" >/dev/null
	@touch $@

# Debian packages: the embedded data sets (Fashion-MNIST; English text from
# fortunes, for chapter 19's language models), the browser for tests/browser,
# Graphviz for the method diagrams;
# npm only to fetch MathJax. Installed only when missing and apt-get exists.
sysdeps:
	@missing=""; \
	[ -d /usr/share/datasets/fashion-mnist ] || missing="$$missing dataset-fashion-mnist"; \
	[ -f /usr/share/games/fortunes/fortunes ] || missing="$$missing fortunes"; \
	[ -x $(CHROMIUM) ] || missing="$$missing chromium"; \
	command -v dot >/dev/null || missing="$$missing graphviz"; \
	[ -f $(MATHJAX_STAMP) ] || command -v npm >/dev/null || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null; then \
	    echo "apt-get install:$$missing"; \
	    $(SUDO) apt-get update -q; \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	  else \
	    echo "warning: missing$$missing and no apt-get: install them yourself" >&2; \
	  fi; \
	fi

$(MATHJAX_TGZ):
	@mkdir -p $(@D)
	cd $(@D) && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null
	echo "$(MATHJAX_SHA256)  $@" | sha256sum -c --quiet -

$(MATHJAX_STAMP): $(MATHJAX_TGZ)
	rm -rf $(MATHJAX_DIR) && mkdir -p $(MATHJAX_DIR)
	tar -xzf $< -C $(MATHJAX_DIR) --strip-components=2 \
		$(addprefix package/es5/,$(MATHJAX_FILES))
	@touch $@

# ---------------------------------------------------------------- book

# papermill writes to a scratch path first: a failed run never leaves a fresh-looking
# output behind. The kernel's cwd is the output's folder, as it is for nbval.
# Progress-bar redraws are then squashed to what a terminal shows (see the script).
$(EXEC_DIR)/notebooks/%.ipynb: notebooks/%.ipynb $(PKG_FILES) | setup
	@mkdir -p $(@D) $(EXEC_DIR)/.partial
	@echo "papermill: $< (profile=$(PROFILE), KD_CACHE_DIR=$(KD_CACHE_DIR))"
	@OMP_NUM_THREADS=$(THREADS) MKL_NUM_THREADS=$(THREADS) \
		$(TIMED) "execute $< [$(PROFILE)]" $(PY) -m papermill --kernel $(KERNEL) \
		--cwd $(@D) -p profile $(PROFILE) $< $(EXEC_DIR)/.partial/$(@F) \
		|| { echo "papermill failed: see $(EXEC_DIR)/.partial/$(@F)" >&2; exit 1; }
	@$(PY) scripts/squash_streams.py $(EXEC_DIR)/.partial/$(@F)
	@mv $(EXEC_DIR)/.partial/$(@F) $@

# JOBS notebooks at once, the longest (by their last recorded time) started
# first; two that need one teacher share it (the first trains it, the other
# waits on the run's lock and loads it).
executed: | setup
	@$(MAKE) --no-print-directory -j$(JOBS) \
		$(or $(shell $(PY) scripts/chapter_times.py order results/chapter_times.json \
			$(PROFILE) $(EXECUTED)),$(EXECUTED))

$(GEN_STAMP): $(PKG_FILES) $(wildcard results/bench/*.json results/chapter_times.json) \
		_toc.yml book/course.md scripts/chapter_times.py | setup
	rm -rf $(GEN_DIR) && mkdir -p $(GEN_DIR)
	$(PY) -m kdutils figures --out $(GEN_DIR)
	$(PY) scripts/chapter_times.py table results/chapter_times.json \
		> $(GEN_DIR)/chapter_times.md
	$(PY) scripts/chapter_times.py weeks results/chapter_times.json book/course.md \
		> $(GEN_DIR)/week_times.md
	@touch $@

# The book source: config, prose, generated figures, MathJax, the local Sphinx
# extension and the executed notebooks, copied with their timestamps so that
# Sphinx rebuilds only the pages that changed.
assemble: executed $(GEN_STAMP) | setup
	rm -rf $(SRC_DIR) && mkdir -p $(SRC_DIR)/notebooks
	cp -p _config.yml _toc.yml $(SRC_DIR)/
	cp -pR book _offline $(SRC_DIR)/
	mkdir -p $(SRC_DIR)/scripts && cp -p scripts/sphinx_*.py $(SRC_DIR)/scripts/
	rm -rf $(SRC_DIR)/book/_generated
	mkdir -p $(SRC_DIR)/book/_generated
	cp -p $(GEN_DIR)/* $(SRC_DIR)/book/_generated/
	$(if $(EXECUTED),cp -p $(EXECUTED) $(SRC_DIR)/notebooks/)

book: assemble
	@$(PY) scripts/colab_cell.py --warn
	@$(TIMED) "jupyter-book build [$(PROFILE)]" $(JB) build \
		$(SRC_DIR) --path-output $(PROFILE_DIR) $(JB_FLAGS)
	@$(PY) scripts/nb_timings.py $(EXECUTED)
	@echo "Book: $(abspath $(HTML_DIR))/index.html"

# ---------------------------------------------------------------- test

test: setup
	@mkdir -p $(BUILD) && rm -f $(TEST_TIMINGS)
	@export KD_TIMINGS=$(TEST_TIMINGS); \
	for stage in lint unit install notebooks nbval book browser; do \
	  echo "=== make test-$$stage"; \
	  $(TIMED) "test-$$stage" $(MAKE) --no-print-directory test-$$stage; \
	done
	@echo "=== stage timings"; cat $(TEST_TIMINGS)

test-lint: | setup
	$(PY) -m ruff check $(LINT_PATHS)
	$(VENV)/bin/lint-imports

test-unit: | setup
	$(PY) -m pytest -q tests --ignore=tests/browser

# The wheel and sdist built, the wheel installed into a fresh venv and used from
# outside the checkout (a module left out of the wheel fails here).
test-install: | setup
	bash scripts/check_install.sh $(PY) $(BUILD)/dist

# Every smoke notebook executed anew (JOBS at once), training from an empty
# cache kept for test-nbval.
TEST_CACHE := $(BUILD)/smoke/test-cache
test-notebooks: | setup
	$(if $(NOTEBOOKS),,$(error no notebooks/*.ipynb to test))
	rm -rf $(BUILD)/smoke/executed $(TEST_CACHE)
	$(MAKE) --no-print-directory PROFILE=smoke KD_CACHE_DIR=$(abspath $(TEST_CACHE)) executed

# nbval re-executes the executed smoke notebooks, one after another, with the
# runs test-notebooks trained (so it checks the notebooks, not training again:
# the golden fingerprints in test-unit check that every method's training
# reproduces), and compares every output strictly (see scripts/nbval_sanitize.cfg
# for what may vary, scripts/nbval_ignore_stderr.py for why stderr is not
# compared). Cells that do not go through the cache (searches, timings, plots)
# run again in full.
test-nbval: | setup
	$(if $(NOTEBOOKS),,$(error no notebooks/*.ipynb to test))
	@mkdir -p $(TEST_CACHE); set -x; \
	KD_CACHE_DIR=$(abspath $(TEST_CACHE)) OMP_NUM_THREADS=$(THREADS) MKL_NUM_THREADS=$(THREADS) \
	PYTHONPATH=scripts$${PYTHONPATH:+:$$PYTHONPATH} \
	$(PY) -m pytest -q -p nbval_ignore_stderr --nbval --nbval-current-env \
		--nbval-sanitize-with scripts/nbval_sanitize.cfg \
		$(patsubst %,$(BUILD)/smoke/executed/%,$(NOTEBOOKS))

# From scratch, so that no page or image left by an earlier build hides a problem.
test-book: | setup
	rm -rf $(BUILD)/smoke/_build
	$(MAKE) --no-print-directory PROFILE=smoke JB_FLAGS="--all -W -n --keep-going" book

test-browser: | setup
	KD_BOOK_HTML=$(BUILD)/smoke/_build/html KD_BOOK_SRC=$(BUILD)/smoke/src \
	KD_CHROMIUM=$(CHROMIUM) KD_SCREENSHOTS=$(BUILD)/screenshots \
		$(PY) -m pytest -q tests/browser

# ---------------------------------------------------------------- misc

SEEDS ?= 0 1 2 3 4
# TUNE=1: first tune each method's main knob on the validation split.
TUNE ?=
reproduce: setup
	$(PY) -m kdutils reproduce --table 1 --profile $(PROFILE) --seeds $(SEEDS) \
		$(if $(TUNE),--tune)

dist: setup
	rm -rf dist
	$(PY) -m build --no-isolation --outdir dist .
	@ls -l dist

BENCH_ARGS ?=
bench: setup
	$(PY) bench/bench_speed.py $(BENCH_ARGS)

# The book's runs one after another with every core against one per core at
# once, on a sample whose teachers `make book` cached (KD_CACHE_DIR).
bench-parallel: setup
	$(PY) bench/book_parallel.py \
		--save results/bench/book-parallel-cpu-$(shell uname -m)-$(shell nproc)cores.json

clean:
	rm -rf $(BUILD)

distclean: clean
	rm -rf $(VENV) .cache _offline dist
