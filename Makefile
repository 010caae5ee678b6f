# wsamerge: `make demo` builds in release and runs the main jobs on the bundled fixtures;
# `make test` runs the whole suite. Both install what they need by themselves.
SWIFT ?= swift
VENV := .venv
PYTHON := $(CURDIR)/$(VENV)/bin/python
BIN := .build/release/wsamerge
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test deps venv build release fixtures bench fuzz man clean

## System packages: libzip and zlib headers (for .npz), jq (for the tested recipes), strace (the
## test that no process is started by a hostile pickle).
deps:
	@if ! pkg-config --exists libzip zlib 2>/dev/null || ! command -v jq >/dev/null || ! command -v strace >/dev/null; then \
	  echo "installing libzip-dev zlib1g-dev jq pkg-config strace"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq libzip-dev zlib1g-dev jq pkg-config strace >/dev/null; \
	fi

## Python environment for fixtures, interop tests and benchmarks (numpy, safetensors, ml_dtypes).
venv: $(VENV)/.installed
$(VENV)/.installed:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check numpy safetensors ml_dtypes
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

test: deps venv
	$(SWIFT) build
	WSAMERGE_PYTHON=$(PYTHON) $(SWIFT) test

bench: release venv
	$(PYTHON) bench/run.py --bin $(BIN) $(BENCH_ARGS)

## libFuzzer targets (safetensors header, .npy header, .npz reader, pickle reader), FUZZ_SECONDS each.
FUZZ_SECONDS ?= 60
fuzz: deps
	bash fuzz/build.sh $(FUZZ_SECONDS)

## The man page, generated from the argument parser (commit the result).
man: deps
	$(SWIFT) package --disable-sandbox plugin generate-manual --date 2026-11-29 --authors "wsamerge developers"
	python3 man/generate.py .build/plugins/GenerateManual/outputs/wsamerge/wsamerge.1 man/sections.mdoc man/wsamerge.1

clean:
	rm -rf .build $(VENV)
