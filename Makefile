# The two commands a new machine needs: `make up` runs ERDU, `make test` runs the test suite.
# Each creates the virtualenv in .venv and installs what it needs first.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
TEST_WORKERS ?= 4

.PHONY: up test install bench clean debs

# Debian packages the test suite drives as real peers: Chromium (browser tests), supervisor (the chaos
# suite's process manager), redis-sentinel and pgbouncer. Installed once, when one is missing.
DEBS := chromium supervisor redis-sentinel pgbouncer
DEB_CMDS := chromium supervisord redis-sentinel pgbouncer

# pip -qq prints errors only: not the index's "Location ... is ignored" lines for every package a local mirror
# lacks, nor setuptools' notes while it builds the editable install. A failed install still says why and stops.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -qq --upgrade pip
	$(VENV)/bin/pip install -qq -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(VENV)/bin/erdu up

# Four pytest-xdist workers on two cores: most integration tests spend their time waiting on worker
# processes, timeouts and outages, not computing, so two per core keep both busy. The tests of a module
# that shares one stack stay on one worker (xdist_group), the others are spread one by one, the longest
# first (their `slow` marks, tests/conftest.py); the 15 slowest tests are listed at the end.
debs:
	@missing=0; for c in $(DEB_CMDS); do command -v $$c >/dev/null 2>&1 || PATH=$$PATH:/usr/sbin command -v $$c >/dev/null 2>&1 || missing=1; done; \
	if [ $$missing = 1 ]; then \
	  echo "installing Debian packages: $(DEBS)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEBS) >/dev/null \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEBS) >/dev/null; }; \
	fi

test: $(STAMP) debs
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/ruff check --no-cache --quiet erdu_tasks workers bench beat_schedule.py
	$(VENV)/bin/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup --durations=15 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var
