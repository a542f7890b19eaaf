# copulse developer entry points. `make` alone lists them.
# The local stack (Kafka, ClickHouse, Prometheus) runs as background processes under .local/ (deploy/stack.sh).

PYTHON ?= python3
PYTEST_ARGS ?=
STACK := deploy/stack.sh
COPULSE := $(PYTHON) -m copulse.cli
export PYTHON

.DEFAULT_GOAL := help
.PHONY: help provision up down status install test run bench soak clean-data

help: ## list the targets
	@echo "usage: make TARGET   (PYTHON=$(PYTHON))"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-11s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

provision: ## install what the stack needs and is missing: Kafka jars (mvn), ClickHouse + Prometheus (apt), copulse (pip)
	$(STACK) provision

up: ## provision, then start Kafka, ClickHouse and Prometheus unless running, and wait until they answer
	$(STACK) up

down: ## stop the stack's processes (by pid file)
	$(STACK) down

status: ## one line per service: running or stopped, pid, ports
	$(STACK) status

install: ## pip install -e '.[dev]'
	$(PYTHON) -m pip install -e '.[dev]'

test: up ## THE test command: provision + up + pytest against the local stack (PYTEST_ARGS='-k smoke -x' passes through)
	@rc=0; \
	COPULSE_KAFKA_BOOTSTRAP_SERVERS="$${COPULSE_KAFKA_BOOTSTRAP_SERVERS:-localhost:$${COPULSE_KAFKA_PORT:-9092}}" \
	COPULSE_CLICKHOUSE_URL="$${COPULSE_CLICKHOUSE_URL:-clickhouse://default@localhost:$${COPULSE_CH_NATIVE_PORT:-9000}/copulse}" \
	$(PYTHON) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ -n "$${COPULSE_PYTEST_EXIT_FILE:-}" ]; then echo $$rc > "$$COPULSE_PYTEST_EXIT_FILE"; fi; \
	if [ $$rc = 5 ]; then echo "make test: ERROR: pytest collected no tests (exit 5)" >&2; fi; \
	exit $$rc

run: ## THE main job: provision + up, migrate, topics, worker + generator in the background, live scorecard until Ctrl-C, then stop what it started (RUN_ARGS='--rate 50')
	$(PYTHON) -m copulse.mainjob $(RUN_ARGS)

bench: up ## the benchmark suite on the local stack, one table (BENCH_ARGS='--events 1000000 --runs 3'); see benchmarks/README.md
	$(PYTHON) -m benchmarks $(BENCH_ARGS)

soak: ## not in CI: 1M events, 5% malformed, kill -9s, broker restart, ClickHouse outages, 2nd worker, on a PRIVATE stack (SOAK_ARGS='--quick')
	$(PYTHON) -m benchmarks.soak $(SOAK_ARGS)

clean-data: ## delete the stack's data and logs under .local/ (keeps the Kafka jar cache); stack must be down
	$(STACK) clean-data
