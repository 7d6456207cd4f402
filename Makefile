# Two commands on a fresh machine with only python3:  make demo   and   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# Rules call `python`: put the project's venv first so every job uses its interpreter.
export PATH := $(BIN):$(PATH)
CORES ?= 8

.PHONY: venv demo test test-fast lint report bench clean

# TensorFlow build: GPU=1 installs tensorflow[and-cuda] at the lock's version (it brings the CUDA
# libraries), GPU=0 the lock's CPU build. Default: 1 where `nvidia-smi -L` lists a GPU.
GPU ?= $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU ' && echo 1 || echo 0)
TF_BUILD := $(if $(filter 1,$(GPU)),gpu,cpu)
TF_OTHER := $(if $(filter 1,$(GPU)),cpu,gpu)
TF_SED_cpu := s/^tensorflow_cpu==/tensorflow_cpu==/
TF_SED_gpu := s/^tensorflow_cpu==/tensorflow[and-cuda]==/

venv: $(VENV)/.installed-$(TF_BUILD)
	@echo "TensorFlow build: $(TF_BUILD) (GPU=$(GPU); choose with GPU=0 or GPU=1)"

# The lock with this machine's TensorFlow build (tests/test_make.py checks the choice).
$(VENV)/requirements.$(TF_BUILD).txt: requirements.lock requirements-gpu.lock
	@mkdir -p $(VENV)
	{ sed -e '$(TF_SED_$(TF_BUILD))' requirements.lock; $(if $(filter gpu,$(TF_BUILD)),cat requirements-gpu.lock;) } > $@

# A venv switching build drops the other TensorFlow first: both packages install `tensorflow`.
$(VENV)/.installed-$(TF_BUILD): $(VENV)/requirements.$(TF_BUILD).txt requirements-nodeps.lock
	@echo "Installing the $(TF_BUILD) build of TensorFlow into $(VENV) (GPU=$(GPU))"
	$(PYTHON) -m venv $(VENV)
	if [ -e $(VENV)/.installed-$(TF_OTHER) ]; then $(BIN)/python -m pip uninstall --quiet -y tensorflow tensorflow_cpu; fi
	rm -f $(VENV)/.installed $(VENV)/.installed-$(TF_OTHER)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r $<
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.lock
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

# Two pytest workers: most of the suite waits on snakemake jobs (one core busy on average). A file's
# tests stay on one worker (loadfile); the shared finished runs are built once (tests/conftest.py).
TEST_WORKERS ?= 2
PYTEST := pytest -n $(TEST_WORKERS) --dist loadfile -rA

test: venv
	$(PYTEST) --durations=25 tests

test-fast: venv
	$(PYTEST) -m "not slow" tests

lint: venv
	snakemake --lint
	snakefmt --check Snakefile workflow/rules
	ruff check .
	ruff format --check .

clean:
	rm -rf results logs resources/demo resources/encoders .snakemake
