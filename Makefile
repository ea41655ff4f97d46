# The two commands a new machine needs: `make up` runs ERDU, `make test` runs the test suite.
# Each creates the virtualenv in .venv and installs what it needs first.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: up test install bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(VENV)/bin/erdu up

test: $(STAMP)
	@command -v docker-compose >/dev/null 2>&1 || { \
	  echo "installing docker-compose (Debian) to validate compose.yaml"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null) \
	  || echo "warning: could not install docker-compose; the compose test will fail"; }
	$(VENV)/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var
