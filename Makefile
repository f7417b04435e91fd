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

# CrewAI pins mcp<2, openai<3 and pydantic<2.13, which the main venv's test tools (mcp 2.x,
# the OpenAI Agents SDK) cannot share: its adapter's test runs in a venv of its own
# (docs/DECISIONS.md D55), without the [test] extra, at the version it was tested with.
CREWAI_VENV := .venv-crewai
CREWAI_STAMP := $(CREWAI_VENV)/.installed

.PHONY: serve demo verify-fixture test test-fast test-crewai lint dist fixtures clean

$(STAMP): $(BUILD_FILES)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ./verifier -e ./client -e '.[test]'
	touch $(STAMP)

$(CREWAI_STAMP): $(BUILD_FILES)
	python3 -m venv $(CREWAI_VENV)
	$(CREWAI_VENV)/bin/python -m pip install -q --upgrade pip
	$(CREWAI_VENV)/bin/python -m pip install -q -e ./verifier -e ./client -e . \
		'crewai==1.15.30' 'pytest>=8' 'hypothesis>=6.100'
	$(CREWAI_VENV)/bin/python -m pip check
	touch $(CREWAI_STAMP)

serve: $(STAMP)
	$(VENV)/bin/lineage serve --host $(HOST) --port $(PORT)

# A fresh story every run: the demo's own ledger and keys are started over.
demo: $(STAMP)
	rm -rf demo.db demo.db-wal demo.db-shm demo.db.checkpoint demo-keys demo-bundle.json demo.vkey
	$(VENV)/bin/lineage demo --db demo.db --keys demo-keys

verify-fixture: $(STAMP)
	$(VENV)/bin/lineage-verify fixtures/bundles/valid-delegation-chain.json --log-key fixtures/log.vkey

# Everything, as CI runs it: lint, format, and every test, the slow ones included.
test: $(STAMP) lint test-crewai
	$(VENV)/bin/pytest -q -n 2

test-crewai: $(CREWAI_STAMP)
	$(CREWAI_VENV)/bin/python -m pytest tests/test_integration_crewai.py -q -p no:randomly

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
	rm -rf $(VENV) $(CREWAI_VENV) .pytest_cache .hypothesis dist build
