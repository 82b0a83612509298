# c4 router: setup, run and test on a Debian 12 machine.
#   make run [MODE=kemi|http] [LISTEN=udp:127.0.0.1:5060] [TABLE=...]
#   make test
#   make bench [ARGS=--full]   SIP benchmark (a few minutes; --full: the whole ladder), then its report
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Kamailio's app_python3 embeds Debian's Python, so the venv is made with it:
# one venv serves the CLI, the tests, c4http and the embedded interpreter.
PYTHON_SYSTEM := /usr/bin/python3
VENV := .venv
MODULES_DIR := build/modules
MODE ?= kemi
LISTEN ?= udp:127.0.0.1:5060
TABLE ?= c4kemi/examples/example.json
API_PORT ?= 8080

DEBIAN_PACKAGES := kamailio kamailio-python3-modules kamailio-json-modules \
	kamailio-extra-modules kamailio-utils-modules sip-tester python3-venv \
	libcurl4-openssl-dev libevent-dev dpkg-dev build-essential bison flex \
	postgresql systemd

.PHONY: help setup debian-packages module venv run test test-e2e bench bench-http bench-packages clean

help:
	@echo "make run    start the router (KEMI mode, example table); MODE=http: c4 serve + Kamailio"
	@echo "make test   run the whole test suite"
	@echo "make test-e2e  only the end-to-end tests (Kamailio + sipp)"
	@echo "make bench  SIP ladder (short; ARGS=--full: whole) and c4 serve vs FastAPI, then benchmarks/README.md"
	@echo "make bench-http  c4 serve against the FastAPI reference with wrk (benchmarks/README.md)"

setup: debian-packages module venv

debian-packages:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

module: debian-packages
	@kamailio/build-http-async-client.sh $(MODULES_DIR)

$(VENV)/.installed: pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON_SYSTEM) -m venv $(VENV)
	@$(VENV)/bin/pip install -q --upgrade pip
	@$(VENV)/bin/pip install -q -e '.[test]'
	@touch $@

venv: debian-packages $(VENV)/.installed

# Both modes run the full setup first (the README's two commands do; HTTP
# mode needs the http_async_client module it builds).
run: setup
ifeq ($(MODE),http)
	$(VENV)/bin/c4 kamailio --mode http --table $(TABLE) --listen $(LISTEN) --serve-api --api http://127.0.0.1:$(API_PORT)
else
	$(VENV)/bin/c4 kamailio --mode kemi --table $(TABLE) --listen $(LISTEN)
endif

# Lint first: an unused import or an undefined name fails the run.
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q

# Only the end-to-end tests (real Kamailio and sipp on loopback).
test-e2e: setup
	$(VENV)/bin/python -m pytest -q tests/e2e

# make bench: the SIP capacity ladder and overload runs (benchmarks/sip.py),
# c4 serve against the FastAPI reference under wrk (benchmarks/http_reference.py,
# server and wrk pinned to different cores), then the report
# (benchmarks/report.py: tables and plots in benchmarks/README.md).
# ARGS=--full: the whole SIP ladder. Only these targets install wrk and the
# bench and reference extras (matplotlib, FastAPI): make test needs none.
BENCH_PACKAGES := wrk
HTTP_BENCH_ARGS ?= -d 5

bench-packages: setup
	@dpkg-query -W -f='$${Status}\n' $(BENCH_PACKAGES) 2>/dev/null | grep -q '^install ok installed' || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(BENCH_PACKAGES) >/dev/null; }
	@$(VENV)/bin/pip install -q -e '.[test,bench,reference]'

bench: bench-packages
	$(VENV)/bin/python benchmarks/sip.py $(ARGS)
	$(VENV)/bin/python benchmarks/http_reference.py $(HTTP_BENCH_ARGS)
	$(VENV)/bin/python benchmarks/report.py

bench-http: bench-packages
	$(VENV)/bin/python benchmarks/http_reference.py $(HTTP_BENCH_ARGS)
	$(VENV)/bin/python benchmarks/report.py

clean:
	rm -rf $(VENV) build
