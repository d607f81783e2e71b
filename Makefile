# ucloud — the two commands: `make up` (a one-box dev cloud) and `make test` (the whole suite).
# Both install what they need on a fresh Debian 12 machine (as root).

SHELL := /bin/bash
export PIPENV_VENV_IN_PROJECT := 1
export PIPENV_YES := 1
export PIPENV_NOSPIN := 1
export PIPENV_IGNORE_VIRTUALENVS := 1
PIPENV_VERSION ?= 2026.10.3
TOOLS := .tools
PIPENV := $(TOOLS)/bin/pipenv
VENV := .venv
PYTEST_ARGS ?=

.PHONY: deps venv test up down status clean help

help:
	@echo "make up      start a one-box dev cloud (etcd, api, scheduler, one vm host)"
	@echo "make down    stop it (keeps its data); make clean also removes the data; make status"
	@echo "make test    install everything and run the whole test suite"

deps:
	@bash scripts/install-deps.sh

$(PIPENV):
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q "pipenv==$(PIPENV_VERSION)"

$(VENV)/.synced: Pipfile.lock pyproject.toml | $(PIPENV)
	$(PIPENV) sync --dev
	bash scripts/link-ceph-bindings.sh $(VENV)
	touch $@

venv: deps $(VENV)/.synced

test: venv
	$(VENV)/bin/python -m pytest -ra $(PYTEST_ARGS)

# The dev cloud: etcd, ucloud-api, ucloud-scheduler and one ucloud-vm host, in the background,
# with pid and log files under var/devcloud/ (UCLOUD_DEV_DIR). See ucloud_common/devcloud.py.
up: venv
	@$(VENV)/bin/python -m ucloud_common.devcloud up

down status:
	@if [ -x $(VENV)/bin/python ]; then $(VENV)/bin/python -m ucloud_common.devcloud $@; \
	else echo "make $@: no $(VENV) yet, so nothing was started"; fi

clean:
	@if [ -x $(VENV)/bin/python ]; then $(VENV)/bin/python -m ucloud_common.devcloud clean; \
	else rm -rf var/devcloud; fi
