# The two commands of the README: `make run` and `make test`. Each bootstraps .venv by itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench check clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "exportgate needs Python 3.11 or newer (found %s); set PYTHON=python3.X" % sys.version.split()[0])'
	@# A venv left half-made (python3-venv missing: ensurepip failed after bin/python was written) is made again.
	@$(BIN)/python -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); } || { echo "cannot create $(VENV): on Debian or Ubuntu, install python3-venv" >&2; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres]'
	@touch $(STAMP)

run: $(STAMP)
	@$(BIN)/python -m exportgate.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/decide.py

check: $(STAMP)
	$(BIN)/exportgate check

clean:
	rm -rf $(VENV) build dist plugin/*.egg-info .pytest_cache .hypothesis var/demo
