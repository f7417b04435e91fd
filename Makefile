# Two front doors: `make serve` runs the service, `make test` runs the tests.
# Each creates .venv and installs what it needs on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: serve demo verify-fixture test lint fixtures clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/lineage serve

demo: $(STAMP)
	$(VENV)/bin/lineage demo --db demo.db --keys demo-keys

verify-fixture: $(STAMP)
	$(VENV)/bin/lineage-verify fixtures/bundles/valid-delegation-chain.json --log-key fixtures/log.vkey

test: $(STAMP) lint
	$(VENV)/bin/pytest -q -n 2

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fixtures: $(STAMP)
	$(PY) -m fixtures.generate

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
