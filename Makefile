# run-dat-sheesh — the two commands of the README, and a few helpers. Run as root.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# What shellcheck checks: every shell script (busybox's are checked as dash and the sourced
# run-ts as bash, by their directives). kill-marked is Perl: perl -c.
SHELL_SCRIPTS := .ci/run deploy/host-setup.sh deploy/libvirt-daemons.sh guest/initrd/init guest/rootfs/usr/sbin/shutdown \
	$(addprefix guest/rootfs/etc/rds/,rc.boot rc.shutdown run-guest-agent run-sshd) \
	$(addprefix guest/rootfs/usr/local/lib/rds/,deno-spare pack reidentify run-ts settle untar)

.PHONY: run test setup image unit integration lint clean-vms bench bench-remote fuzz load density

## make run: set up the host if needed, build the guest image if missing, serve on $PORT (3000)
run: image
	$(PY) -m app.cli serve

## make test: the whole suite, real-VM integration tests included
test: image
	$(PY) -m pytest -v --durations=30 $(PYTEST_ARGS) tests

setup:
	bash deploy/host-setup.sh

image: setup
	$(PY) guest/build/build_image.py

## make unit: the unit tests alone, the client's included: no root, no libvirt (makes a
## virtualenv with .[test] and ./client)
unit:
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]' -e ./client
	$(PY) -m pytest -v tests/unit tests/client

integration: image
	$(PY) -m pytest -v -m integration tests/integration tests/browser

## make lint: import contracts, ruff, shellcheck (needs the virtualenv and shellcheck, not root)
lint:
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	shellcheck -x $(SHELL_SCRIPTS)
	perl -c guest/rootfs/usr/local/lib/rds/kill-marked

## make clean-vms: delete every VM of this service and leftovers of crashed runs
clean-vms: setup
	$(PY) -m app.cli purge

## make bench: create (API vs raw libvirt boot), commands (API vs raw SSH), delete, custom
## images (build time, create from one); see BENCHMARKS.md
bench: image
	$(PY) bench/bench_create.py --rounds 5 --capacity 8
	$(PY) bench/bench_commands.py
	$(PY) bench/bench_delete.py --rounds 10
	$(PY) bench/bench_images.py --builds 3 --creates 7

## make bench-remote: create (cold, memory snapshot, on the remote host) and exec (latency,
## throughput) on the two-host rig's remote host vs this one, through one live server; the rig
## is started and removed (BENCHMARKS.md, docs/multihost.md). Run it under the VM lock.
BENCH_REMOTE_ARGS ?= --rounds 3
bench-remote: image
	$(PY) bench/bench_remote.py $(BENCH_REMOTE_ARGS)

## make fuzz: schemathesis against a live server with real VMs, every phase, >= 1000 cases, a
## summary at the end (RELIABILITY.md); its bounded run is in make test. Run it under the VM lock.
FUZZ_MAX_EXAMPLES ?= 10
fuzz: image
	FUZZ_MAX_EXAMPLES=$(FUZZ_MAX_EXAMPLES) FUZZ_MIN_CASES=1000 \
		FUZZ_PHASES=examples,coverage,fuzzing,stateful \
		$(PY) -m pytest -v -s -p no:cacheprovider tests/integration/test_fuzz_live.py

## make load: a live server under mixed load (exec, run-ts, upload, download) for 3 minutes,
## exec throughput against raw SSH, a burst of 20 creates against a raw restore loop; fails
## on errors or growth (BENCHMARKS.md, RELIABILITY.md). LOAD_ARGS="--duration 600" for longer
load: image
	$(PY) bench/bench_load.py $(LOAD_ARGS)

## make density: 200 idle VMs through the API (stops early at a 2 GiB MemAvailable floor),
## memory and idle CPU per VM with and without KSM, exec under that load, all deleted
density: image
	$(PY) bench/bench_density.py $(DENSITY_ARGS)
