# The two commands a newcomer needs: `make demo` (main job on the CPU default) and `make test`.
# Both create or update the project-local virtual environment first (fast when nothing changed).
PROFILE ?= cpu
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo demo-quick test test-fast lint format bench clean

setup:
	@bash launch/setup_env.sh $(PROFILE)

demo: setup
	$(VENV)/bin/rsa demo --out runs/demo

demo-quick: setup
	$(VENV)/bin/rsa demo --quick --out runs/demo-quick

test: setup
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not gpu and not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
