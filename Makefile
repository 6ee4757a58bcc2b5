# Every target creates or updates .venv itself, so each works on a fresh clone.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	&& { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all install test test-compat lint format bench demo image chaos clean

all: test

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python >= 3.11 not found; install it or set PYTHON=" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[daemon,test,bench,k8s,chart]'
	$(BIN)/python -m pip install --quiet --upgrade redis  # `make test` runs on the latest
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

# The library and elector tests against each redis-py that matters: the oldest we
# support, the last 7.x, and the newest 8.x (each in its own .venv-redis-<version>).
COMPAT_REDIS ?= 5.3.1 7.4.1 8
COMPAT_TESTS := tests/test_lock.py tests/test_async_lock.py tests/test_handover.py tests/test_elector.py \
	tests/test_urls.py tests/test_redispy_api.py tests/test_replication.py
test-compat:
	@test -n "$(PYTHON)" || { echo "error: Python >= 3.11 not found; install it or set PYTHON=" >&2; exit 1; }
	@set -e; for v in $(COMPAT_REDIS); do \
	  venv=.venv-redis-$$v; spec="redis==$$v"; \
	  case $$v in *.*) ;; *) spec="redis>=$$v,<$$(($$v + 1))";; esac; \
	  test -x $$venv/bin/python || $(PYTHON) -m venv $$venv; \
	  $$venv/bin/python -m pip install --quiet -e '.[daemon,test]' "$$spec"; \
	  echo "== redis-py $$($$venv/bin/python -c 'import redis; print(redis.__version__)')"; \
	  $$venv/bin/python -m pytest -q -p no:cacheprovider $(COMPAT_TESTS); \
	done

bench: $(STAMP)
	$(BIN)/python bench/run.py

chaos: $(STAMP)
	$(BIN)/python -m tests.chaos --seconds $${CHAOS_SECONDS:-600} --seed $${CHAOS_SEED:-1}

demo: $(STAMP)
	$(BIN)/python -m devtools.demo

IMAGE ?= leaderd:dev
image:
	@command -v docker >/dev/null || { echo "error: docker is not installed" >&2; exit 1; }
	docker build -t $(IMAGE) .

clean:
	rm -rf $(VENV) .venv-redis-* .pytest_cache .mypy_cache .ruff_cache build *.egg-info
