# Two commands on a fresh machine with only python3:  make demo   and   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# Rules call `python`: put the project's venv first so every job uses its interpreter.
export PATH := $(BIN):$(PATH)
CORES ?= 8

.PHONY: venv demo test test-fast lint report bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	touch $@

demo: venv
	snakemake --cores $(CORES) --resources gpu=1
	@echo
	@cat results/comparison.md

# Rule all does not request the Grad-CAM galleries (`snakemake explain`), and a report covers only
# the jobs of its targets: every model folder already under results/explain/ is added as a target.
# REPORT_ARGS: more snakemake options, after the targets (e.g. REPORT_ARGS="--configfile config/test.yaml").
REPORT_ARGS ?=
report: venv
	snakemake --report results/report.html all $(patsubst %/,%,$(wildcard results/explain/*/)) $(REPORT_ARGS)

test: venv
	pytest -rA --durations=25 tests

test-fast: venv
	pytest -rA -m "not slow" tests

lint: venv
	snakemake --lint
	snakefmt --check Snakefile workflow/rules
	ruff check .
	ruff format --check .

clean:
	rm -rf results logs resources/demo .snakemake
