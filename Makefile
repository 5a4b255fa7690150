# mer-residual: one venv (.venv), reused; every target installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Seed of the synthetic data: `make demo SEED=3` generates data/synthetic-seed3 and runs the
# same demo on it (runs and reports in their own folders), to check a result is not one seed's.
SEED ?= 0
ifeq ($(SEED),0)
SYNTH_DIR := data/synthetic
RUNS_DIR := papermill_runs
REPORTS_DIR := reports
else
SYNTH_DIR := data/synthetic-seed$(SEED)
RUNS_DIR := papermill_runs/seed$(SEED)
REPORTS_DIR := reports/seed$(SEED)
endif
# Where the data lives: the synthetic data, or a folder holding CASME2/, SAMM/, SMIC/.
DATA_ROOT ?= $(SYNTH_DIR)
# Parameter profile: small and CPU-fast on synthetic data, the paper's settings otherwise.
ifeq ($(DATA_ROOT),$(SYNTH_DIR))
PROFILE ?= synthetic-cpu
else
PROFILE ?= full-gpu
endif

# Notebook parameters over the profile's, as papermill's -p (`mer reproduce -p NAME VALUE`), e.g.
# make demo PARAMS="-p ensemble 2" RUNS_DIR=papermill_runs/ensemble2 REPORTS_DIR=reports/ensemble2
PARAMS ?=

.PHONY: install test demo synth reproduce

install: $(STAMP)

# uv installs the same versions as pip (pyproject's pins) in less than half the time: 52 s
# against 112 s on the development machine's 2 cores, from empty caches. It is installed into
# the venv first; where it cannot be had or fails (an offline mirror only pip is configured for),
# pip installs as before. Neither byte-compiles: compileall then compiles on every core, not
# one file at a time (make install 142 s against 177 s with pip's own). Where PYTHONDONTWRITEBYTECODE is set,
# what is not compiled here is compiled again at every import (importing the kit's stack takes
# 39 s uncompiled, 14 s compiled). The packages' own test suites (tests/ folders, a fifth of the
# code) and pip are never imported by the kit and are left out: 40 s against 61 s on 2 cores.
# A few of torch's test helpers use Python 3.12 syntax and do not compile (pip passes over them
# too), hence the || true.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv && $(PY) -m uv pip install --quiet --python $(PY) -e ".[test]" \
	  || { echo "uv could not install the packages (above): pip installs them instead"; \
	       $(PY) -m pip install --quiet --disable-pip-version-check --no-compile -e ".[test]"; }
	$(PY) -m compileall -qq -j 0 -x '/(tests|pip)/' $(VENV)/lib || true
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (mer-residual)" >/dev/null
	@touch $(STAMP)

test: install
	$(PY) -m pytest -q

# Synthetic data in the three datasets' native layouts (skipped when already there).
synth: install
	@if [ -d $(SYNTH_DIR)/CASME2 ]; then echo "$(SYNTH_DIR) exists: reusing it"; \
	else $(PY) -m mer_utils synth --out $(SYNTH_DIR) --seed $(SEED); fi

# The main job: every notebook through papermill into papermill_runs/, HTML into reports/.
demo: synth reproduce

reproduce: install
	$(PY) -m mer_utils reproduce --data-root $(DATA_ROOT) --profile $(PROFILE) --runs-dir $(RUNS_DIR) --reports-dir $(REPORTS_DIR) $(PARAMS)
