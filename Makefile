# Two front doors: `make serve` runs the service, `make test` runs the tests.
# Each creates .venv and installs what it needs on first use: the three
# distributions (verifier/, client/, and the ledger and service at the root),
# editable, so a change to any file is live at once.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
BUILD_FILES := VERSION pyproject.toml setup.py verifier/pyproject.toml client/pyproject.toml client/setup.py

.PHONY: serve demo verify-fixture test test-fast lint dist fixtures clean

$(STAMP): $(BUILD_FILES)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ./verifier -e ./client -e '.[test]'
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/lineage serve --host $(HOST) --port $(PORT)

# A fresh story every run: the demo's own ledger and keys are started over.
demo: $(STAMP)
	rm -rf demo.db demo.db-wal demo.db-shm demo.db.checkpoint demo-keys demo-bundle.json demo.vkey
	$(VENV)/bin/lineage demo --db demo.db --keys demo-keys

verify-fixture: $(STAMP)
	$(VENV)/bin/lineage-verify fixtures/bundles/valid-delegation-chain.json --log-key fixtures/log.vkey

# Everything, as CI runs it: lint, format, and every test, the slow ones included.
test: $(STAMP) lint
	$(VENV)/bin/pytest -q -n 2

# The developer's loop: no tests marked slow (wheels, big logs), fewer property examples.
test-fast: $(STAMP)
	HYPOTHESIS_PROFILE=fast $(VENV)/bin/pytest -q -n 2 -m 'not slow'

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Every wheel and sdist, into dist/: lineage-verifier, lineage-client, lineage-ledger.
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build -q -o dist verifier
	$(PY) -m build -q -o dist client
	$(PY) -m build -q -o dist .

fixtures: $(STAMP)
	$(PY) -m fixtures.generate

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis dist build
