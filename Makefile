# Two commands for a fresh Debian 12 machine (see README):
#   make run   - set everything up, start Redis + the daemon, take a demo capture
#   make test  - set everything up, run ruff, mypy and the test suite
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SYSTEM_PACKAGES := redis-server libpcap-dev tcpdump tcpreplay bind9 bind9-dnsutils \
	unbound fstrm-bin tshark iputils-ping iproute2 procps python3-venv gcc python3-dev \
	jq openssl chromium chromium-driver systemd bindfs

.PHONY: setup system-packages venv run test lint typecheck pytest bench clean

setup: system-packages venv

# Installs only what is missing, so a second run costs a few dpkg queries.
system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:" $$missing; \
		SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	@touch $@

run: setup
	$(PY) scripts/demo.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

# Test files run side by side in PYTEST_WORKERS processes (pytest-xdist; a
# file's tests stay together, in order): they mostly wait on servers, packets
# and subprocesses, so 3 on 2 cores finish in about 2/3 of the time of one.
# `make pytest PYTEST_WORKERS=0` runs them all in one process.
PYTEST_WORKERS ?= 3
pytest: venv
	$(VENV)/bin/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: setup lint typecheck pytest

# Every script in bench/ but the modules they share and dnsmix.py (which
# writes the DNS mix dnswire.py reads, and wants a file name).
BENCH_HELPERS := bench/benchlib.py bench/capture_rss.py bench/capture_table.py bench/probes.py \
	bench/storm_report.py bench/dnsmix.py
BENCHMARKS := $(filter-out $(BENCH_HELPERS),$(wildcard bench/*.py))

# The benchmarks' Python peers (dnstap-receiver, ...): each fails without its peer.
# Under the constraints, so adding the peers changes no version the tests use.
bench: setup
	$(PY) -m pip install -q -c constraints.txt -e '.[bench]'
	@for b in $(BENCHMARKS); do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache captures run
