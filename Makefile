# Both entry points create .venv when it is missing and install torch (CPU wheel, pinned) first.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint proto bench clean chaos chaos-ci chaos-tools fuzz

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/secagg demo $(ARGS)

# one worker per core, each test file on one worker (files share module fixtures and federations)
# the fuzz targets (tests/fuzz) run as a smoke here: SECAGG_FUZZ=smoke, a few dozen inputs each
test: $(STAMP)
	SECAGG_FUZZ=$${SECAGG_FUZZ:-smoke} $(PY) -m pytest -q -n auto --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check secagg attestation tests
	$(VENV)/bin/mypy secagg attestation

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I secagg/transport/proto \
	  --python_out=secagg/transport/generated --grpc_python_out=secagg/transport/generated \
	  --pyi_out=secagg/transport/generated secagg/transport/proto/secagg.proto
	sed -i 's/^import secagg_pb2 as/from . import secagg_pb2 as/' secagg/transport/generated/secagg_pb2_grpc.py

bench: $(STAMP)
	$(VENV)/bin/secagg bench $(ARGS)

# the fault and load harness (issue #18, RELIABILITY.md): every kill point in every mode, the load, then
# the network faults (last: they need root and network namespaces, and refuse with one line without)
NET_SCENARIOS := partition-10s partition-60s partition-timeout partition-aggregator-10s \
  partition-aggregator-60s partition-aggregator-timeout partition-upload-10s partition-upload-60s \
  slow-link slow-link-aggregator
chaos: $(STAMP) chaos-tools
	$(VENV)/bin/secagg chaos --scenario baseline --scenario kill-aggregator --scenario kill-site --out chaos-out/faults $(ARGS)
	$(VENV)/bin/secagg chaos --scenario disk-full --scenario clock-skew --out chaos-out/disk-clock $(ARGS)
	$(VENV)/bin/secagg chaos --scenario load --out chaos-out/load $(ARGS)
	$(VENV)/bin/secagg chaos $(addprefix --scenario ,$(NET_SCENARIOS)) --out chaos-out/net $(ARGS)

# slow-link drops packets with nftables (the kernel's sch_netem, which `tc netem` needs, may be missing):
# installed here with apt-get where it is missing and we are root; `make test` never needs it
chaos-tools:
	@command -v nft >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q nftables || { apt-get update -q && apt-get install -y -q nftables; }; }; } || \
	  echo "nftables not installed (not root, or no apt-get): slow-link will refuse"

# its CI subset: per mode one aggregator kill, one site kill and one 10 s site partition, 5 sites (tests/chaos)
chaos-ci: $(STAMP)
	SECAGG_CHAOS_CI=1 $(PY) -m pytest -q -m chaos tests/chaos $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo-out simulate-out bench-out chaos-out .pytest_cache .mypy_cache .ruff_cache

# every fuzz target for FUZZ_EXECS executions (10^6 by default; FUZZ_SECONDS time-boxes each target);
# per-target executions, crashes, wall time in fuzz-out/results.{json,md}, crash inputs in fuzz-out/crashes
FUZZ_EXECS   ?= 1000000
FUZZ_SECONDS ?= inf
fuzz: $(STAMP)
	$(PY) -m tests.fuzz.run --execs $(FUZZ_EXECS) --max-seconds $(FUZZ_SECONDS) --out fuzz-out $(ARGS)
