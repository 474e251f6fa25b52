# Two commands on a fresh machine with only Python 3.11:
#   make demo   - create .venv if missing, run the whole workflow on the embedded toy data
#                 (run again after a crash, it resumes: see README, "Resuming after a crash")
#   make test   - create .venv if missing, run the test suite
PYTHON ?= python3
VENV ?= .venv
CORES ?= 2
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.hepml-installed

.PHONY: demo test env clean

env: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.lock
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	PATH=$(BIN):$$PATH snakemake --cores $(CORES) --show-failed-logs --keep-going --rerun-incomplete

test: $(STAMP)
	PATH=$(BIN):$$PATH python -m pytest -q

clean:
	rm -rf results .snakemake
