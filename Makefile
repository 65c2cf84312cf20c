# pycni: `make test` is the one test command (root: the kernel tests use network namespaces).
SHELL := /bin/bash
VENV ?= .venv
PYTHON := $(VENV)/bin/python
DESTDIR ?=
CC ?= cc
SOURCES := $(shell find pycni plugins ipam meta -name '*.py') build/pycni.spec build/entry.py \
	build/launcher.c build/launcher_table.py

.PHONY: all venv stage build cnitool install test test-fast lint bench stress demo clean

all: build

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[dev]'
	touch $@

# build/stage: the package tree as installed (plugins/ -> pycni/plugins, ...), for tools that
# do not follow setuptools' package-dir mapping (PyInstaller, mypy).
stage: build/stage/.staged
build/stage/.staged: $(SOURCES)
	rm -rf build/stage && mkdir -p build/stage
	cp -r pycni build/stage/pycni
	cp -r plugins build/stage/pycni/plugins
	cp -r ipam build/stage/pycni/ipam
	cp -r meta build/stage/pycni/meta
	find build/stage -name __pycache__ -prune -exec rm -rf {} +
	touch $@

# dist/bin: the onedir bundle (the frozen `pycni` and the native launcher `cni`, built from
# build/launcher.c with the registry's VERSION answers compiled in) plus one link per
# implemented CNI type (to the launcher).
build: dist/bin/.built
dist/bin/.built: build/stage/.staged | venv
	rm -rf build/work
	$(PYTHON) -m PyInstaller --noconfirm --log-level WARN --distpath build/work/dist \
		--workpath build/work/tmp build/pycni.spec
	PYTHONPATH=build/stage $(PYTHON) build/launcher_table.py > build/work/launcher_table.h
	$(CC) -O2 -Wall -Wextra -Werror -Ibuild/work -o build/work/dist/pycni/cni build/launcher.c
	rm -rf dist/bin && mkdir -p dist/bin
	mv build/work/dist/pycni dist/bin/pycni.bundle
	for type in $$(PYTHONPATH=build/stage $(PYTHON) -c \
		'from pycni import registry; print(*sorted(registry.PLUGINS))'); do \
		ln -s pycni.bundle/cni dist/bin/$$type; done
	touch $@

# The conformance runtime: a cnitool built against Debian's libcni.
cnitool: dist/cnitool
dist/cnitool: conformance/cnitool/main.go conformance/build-cnitool.sh
	bash conformance/build-cnitool.sh dist/cnitool

install: build
	$(PYTHON) -m pycni.install --from dist/bin --to $(DESTDIR)/opt/cni/bin

# The long runs (marked `stress`) are `make stress`'s; their smoke runs stay here.
test: build cnitool lint
	PYCNI_REQUIRE_BUILD=1 $(PYTHON) -m pytest -q -p no:cacheprovider -m 'not stress' --durations=20

test-fast: venv
	$(PYTHON) -m pytest -q -p no:cacheprovider tests -m 'not conformance and not stress'

lint: venv stage
	$(VENV)/bin/ruff check pycni plugins ipam meta tests conformance build/launcher_table.py
	cd build/stage && ../../$(VENV)/bin/mypy --config-file ../../pyproject.toml pycni

bench: build cnitool
	$(PYTHON) -m conformance.bench --rounds 200
	$(PYTHON) -m conformance.bench_ipam --rounds 100
	$(PYTHON) -m conformance.bench_bridge --rounds 100
	$(PYTHON) -m conformance.bench_macvlan --rounds 100
	$(PYTHON) -m conformance.bench_multus --rounds 50
	$(PYTHON) -m conformance.bench_flannel --peers 1000,10000
	$(PYTHON) -m conformance.bench_pods --rounds 50
	$(PYTHON) -m conformance.bench_concurrent --pods 50 --rounds 3

# A two-node cluster with a business network, all in network namespaces, then torn down.
demo: build cnitool
	$(PYTHON) -m conformance.demo --store $(or $(STORE),file)

# Churn, every crash point, long fuzzing, the slower variants: see docs/reliability.md.
stress: build cnitool
	PYCNI_REQUIRE_BUILD=1 $(PYTHON) -m pytest -q -p no:cacheprovider -m stress --durations=20

clean:
	rm -rf dist build/stage build/work
