# Every target creates or updates .venv itself, so each works on a fresh clone.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	&& { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all install test lint format bench demo image chaos clean

all: test

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python >= 3.11 not found; install it or set PYTHON=" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench,k8s,chart]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check leaderd tests bench
	$(BIN)/ruff format --check leaderd tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format leaderd tests bench
	$(BIN)/ruff check --fix leaderd tests bench

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python bench/run.py

chaos: $(STAMP)
	$(BIN)/python -m tests.chaos --seconds $${CHAOS_SECONDS:-600} --seed $${CHAOS_SEED:-1}

demo: $(STAMP)
	$(BIN)/python -m leaderd.demo

IMAGE ?= leaderd:dev
image:
	@command -v docker >/dev/null || { echo "error: docker is not installed" >&2; exit 1; }
	docker build -t $(IMAGE) .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
