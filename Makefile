# pero-worker: common tasks.  Everything runs from the repository's virtual environment (.venv).
#
#   make install        Debian packages (ZooKeeper, OpenSSH server, RabbitMQ) + .venv + python packages
#   make services       start the local ZooKeeper, SFTP and RabbitMQ setup (scripts/local_services.py)
#   make services-stop  stop the local ZooKeeper and sshd (the machine's RabbitMQ keeps running)
#   make lint           ruff check (rules in pyproject.toml)
#   make test           install (if needed), services, then the whole test suite
#   make proto          regenerate libs/message_pb2.py from libs/message.proto
#   make demo           end-to-end demo on the local services
#   make bench          benchmarks
#   make docker-images  container engine (podman) + every image (cached; README "Deploy with containers")
#   make docker-test    the images built and the whole stack run in containers (container_tests/; not in `make test`)
#   make cluster-test   3-node ZooKeeper + 3-node RabbitMQ on loopback, faults while pages flow (dev/cluster_failover.py)
#   make chaos          fault-injection suite: 1,000 pages, every fault (dev/chaos/run.py; 4-6 min)
#   make chaos-short    the same, fewer pages and faults (<= 5 min; .ci/run runs it after make test)
#
# Variables: TESTS (what pytest runs, default tests), PYTEST_ARGS (extra arguments, e.g. PYTEST_ARGS="-k sftp -x"),
#            TEST_TIMEOUT (seconds for the whole pytest run; 0 = no limit),
#            CLUSTER_ARGS (for cluster-test, e.g. CLUSTER_ARGS="--pages 1000 --keep-cluster"),
#            CHAOS_ARGS (for chaos and chaos-short, e.g. CHAOS_ARGS="--keep").

SHELL := /bin/bash
PY := .venv/bin/python
TESTS ?= tests
PYTEST_ARGS ?=
TEST_TIMEOUT ?= 0

.PHONY: help install services services-stop services-status lint test proto demo bench cluster-test chaos chaos-short \
	docker-engine docker-images docker-test

help:
	@sed -n '2,20p' Makefile | sed 's/^# \{0,1\}//'

install:
	./install_dependencies.sh

services: install
	$(PY) scripts/local_services.py start

services-stop:
	$(PY) scripts/local_services.py stop

services-status:
	$(PY) scripts/local_services.py status

lint: install
	.venv/bin/ruff check .

# pytest exits 5 when it collected no test: that is a failure here, never a silent pass.
test: services
	@rc=0; timeout --signal=INT --kill-after=60 $(TEST_TIMEOUT) $(PY) -m pytest -q $(TESTS) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: ERROR: pytest collected no tests" >&2; fi; \
	if [ $$rc -eq 124 ]; then echo "make test: ERROR: the test run exceeded TEST_TIMEOUT=$(TEST_TIMEOUT) s" >&2; fi; \
	exit $$rc

proto: install
	libs/generate_proto.sh

demo: services
	$(PY) scripts/demo.py

bench: services
	$(PY) bench/pipeline.py
	$(PY) bench/metrics_scrape.py
	$(PY) bench/scheduling.py
	$(PY) bench/cer.py
	$(PY) bench/line_ocr.py
	$(PY) bench/quality.py
	$(PY) bench/download_memory.py
	$(PY) bench/console.py

docker-engine:
	dev/container_engine.sh

docker-images: docker-engine
	dev/build_images.sh

# Under the lock that every user of system_setup.py takes (tests/test_secure_pipeline.py, ...); -s prints the figures.
docker-test: install docker-images
	@rc=0; flock /tmp/pero-secure.lock timeout --signal=INT --kill-after=60 $(TEST_TIMEOUT) \
		$(PY) -m pytest -q -s container_tests $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make docker-test: ERROR: pytest collected no tests" >&2; fi; \
	exit $$rc
cluster-test: install
	$(PY) dev/cluster_failover.py $(CLUSTER_ARGS)

# The chaos suite deploys with system_setup.py (a system account, an sshd): one at a time on this machine, like
# the other tests that call it.
CHAOS_ARGS ?=
chaos: install
	flock /tmp/pero-secure.lock $(PY) -m pero_worker.dev.chaos.run $(CHAOS_ARGS)

chaos-short: install
	flock /tmp/pero-secure.lock $(PY) -m pero_worker.dev.chaos.run --short $(CHAOS_ARGS)
