# Developer and CI entry points. `make test` runs everything against a real Kafka broker;
# a second run does no network work (pip runs only when pyproject.toml changed, the Kafka jars
# are fetched once into ~/.cache/icareus-bridge).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTEST := $(VENV)/bin/pytest
RUFF := $(VENV)/bin/ruff
MYPY := $(VENV)/bin/mypy
INSTALLED := $(VENV)/.installed
KAFKA := $(PY) tools/kafka/local_kafka.py

.PHONY: setup test lint kafka-up kafka-down run demo bench drills clean

setup: $(INSTALLED)
	$(KAFKA) fetch >/dev/null

$(PY):
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ needed")'
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(PY)
	$(PIP) install -q -e '.[dev]'
	touch $@

test: setup
	$(PYTEST) -q

lint: setup
	$(RUFF) check .
	$(MYPY) --strict src

kafka-up: setup
	$(KAFKA) up

kafka-down:
	@if [ -x $(PY) ]; then $(KAFKA) down; fi

run: setup
	$(PY) tools/run_local.py $(RUN_ARGS)

demo: setup
	$(PY) tools/demo.py $(DEMO_ARGS)

# Each benchmark in turn (output also in bench/out/<name>.txt), about 15 minutes; e2e_bench
# reads the HTTP ceiling from icareus_bench's figures. Fails at the end if any of them failed.
BENCHES := plan_bench plan_ab icareus_bench planner_bench status_bench restart_bench e2e_bench
bench: setup
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get install -y -q wrk </dev/null >/dev/null; } || \
	  echo "bench: wrk is missing (apt-get install wrk): icareus_bench will fail"
	@mkdir -p bench/out; failed=""; \
	for b in $(BENCHES); do \
	  [ -f bench/$$b.py ] || continue; \
	  case $$b in \
	    icareus_bench) args="--runs 3";; \
	    e2e_bench) args="--icareus-figures bench/out/icareus_bench.txt $(BENCH_ARGS)";; \
	    *) args="";; \
	  esac; \
	  echo "== $(PY) bench/$$b.py $$args"; \
	  { $(PY) -u bench/$$b.py $$args; echo $$? > bench/out/$$b.rc; } 2>&1 | tee bench/out/$$b.txt; \
	  [ "$$(cat bench/out/$$b.rc)" = 0 ] || failed="$$failed $$b"; \
	done; \
	if [ -n "$$failed" ]; then echo "benchmarks failed:$$failed"; exit 1; fi

# The long drills (at most 25 minutes): the fault drills at full size (about 16 minutes;
# `make test` runs them short), each passing one leaving its figures in var/drills/full/,
# written into docs/RELIABILITY.md after; then hostile input: DRILL_INPUTS (1,000,000) seeded
# inputs through the planner's whole step, split over two processes (seeds DRILL_SEED and
# DRILL_SEED + 1000, one per core; tests/fuzz/hostile.py, counts in docs/RELIABILITY.md).
DRILL_INPUTS ?= 1000000
DRILL_SEED ?= 1
drills: setup
	$(PYTEST) -q tests/drills --drill-size full
	$(PY) tools/drill_figures.py --size full
	@half=$$(( $(DRILL_INPUTS) / 2 )); \
	PYTHONPATH=src:. $(PY) -u -m tests.fuzz.hostile --inputs $$half --seed $(DRILL_SEED) & a=$$!; \
	PYTHONPATH=src:. $(PY) -u -m tests.fuzz.hostile --inputs $$(( $(DRILL_INPUTS) - half )) \
	  --seed $$(( $(DRILL_SEED) + 1000 )) & b=$$!; \
	trap 'kill $$a $$b 2>/dev/null' INT TERM; \
	wait $$a; ra=$$?; wait $$b; rb=$$?; \
	echo "hostile input: seed $(DRILL_SEED) exit $$ra, seed $$(( $(DRILL_SEED) + 1000 )) exit $$rb"; \
	[ $$ra = 0 ] && [ $$rb = 0 ]

clean: kafka-down
	rm -rf var/ bench/out/ .pytest_cache/ .mypy_cache/ .ruff_cache/ .hypothesis/ build/ dist/
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
