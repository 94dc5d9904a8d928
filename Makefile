# Opsflow — the two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install lint migrations-check bench fuzz clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## make run: the whole product on the embedded default (or on DATABASE_URL/REDIS_URL when set).
run: $(STAMP)
	$(BIN)/python manage.py standalone $(if $(PORT),--port $(PORT),)

## make test: the test suite (fakeredis + SQLite by default; real services when DATABASE_URL/REDIS_URL are set).
test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

migrations-check: $(STAMP)
	$(BIN)/python manage.py makemigrations --check --dry-run

bench: $(STAMP)
	$(BIN)/python bench/engine_overhead.py

## make fuzz: schemathesis over every API operation as each role, longer than CI's run.
fuzz: $(STAMP)
	$(BIN)/python scripts/fuzz.py --examples 100 --max-time 600

clean:
	rm -rf $(VENV) var/test .pytest_cache
